"""The read log, the pieces a recording keeps of large files, and the stored recording: plain
data in, plain data out."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from ember.imagefs.recording import (
    PAGE,
    READS_FORMAT,
    Read,
    ReadLog,
    RecordedObject,
    RecordedPiece,
    document,
    parse,
    pieces,
    ranges,
)

SIZES = {"big": 10 * PAGE + 100, "other": 4 * PAGE}


@dataclass
class Image:
    """What `ReadLog.since` asks of an image: whether a file is one of its own."""

    files: set[str]

    def file(self, digest: str) -> object | None:
        return digest if digest in self.files else None


def test_the_log_notes_only_while_a_start_records() -> None:
    log = ReadLog()
    log.note_read("big", 0, 4096)
    assert not log.active
    log.start("im-1")
    log.note_open("small")
    log.note_read("big", 0, 4096)
    assert log.active
    assert log.since(0.0, Image({"big", "small"})) == ["small", Read("big", 0, 4096)]


def test_the_log_is_kept_until_the_last_recording_ends() -> None:
    log = ReadLog()
    log.start("im-1")
    log.start("im-2")
    log.note_open("small")
    assert log.stop("im-1") is False  # im-2 still records: its reads stay
    assert log.since(0.0, Image({"small"})) == ["small"]
    assert log.stop("im-2") is True
    assert not log.active
    assert log.since(0.0, Image({"small"})) == []


def test_since_gives_an_images_reads_after_a_time_in_order_each_once() -> None:
    log = ReadLog()
    log.start("im-1")
    log.note_open("early")
    cut = _monotonic_after_now()
    log.note_read("big", 0, 4096)
    log.note_open("foreign")  # a file of another image
    log.note_open("small")
    log.note_read("big", 0, 4096)  # read again
    assert log.since(cut, Image({"early", "big", "small"})) == [Read("big", 0, 4096), "small"]


def _monotonic_after_now() -> float:
    now = time.monotonic()
    while time.monotonic() == now:
        pass
    return time.monotonic()


def test_pieces_are_whole_pages_each_kept_once_where_first_read() -> None:
    reads = [
        Read("big", PAGE + 10, 20),  # a few bytes: their whole page
        "small",
        Read("big", 0, 3 * PAGE),  # the page before, the one already kept, the one after
        Read("big", PAGE, PAGE),  # kept already: nothing
    ]
    assert pieces(reads, SIZES.__getitem__, 1 << 20) == [
        Read("big", PAGE, PAGE),
        "small",
        Read("big", 0, PAGE),
        Read("big", 2 * PAGE, PAGE),
    ]


def test_pieces_that_follow_each_other_join_up_to_the_limit() -> None:
    reads = [Read("big", i * PAGE, PAGE) for i in range(5)]
    assert pieces(reads, SIZES.__getitem__, 2 * PAGE) == [
        Read("big", 0, 2 * PAGE),
        Read("big", 2 * PAGE, 2 * PAGE),
        Read("big", 4 * PAGE, PAGE),
    ]
    # Another file's piece in between: no join across it.
    reads = [Read("big", 0, PAGE), Read("other", 0, PAGE), Read("big", PAGE, PAGE)]
    assert len(pieces(reads, SIZES.__getitem__, 1 << 20)) == 3


def test_a_piece_at_the_end_of_a_file_stops_at_its_size() -> None:
    assert pieces([Read("big", 10 * PAGE, 50)], SIZES.__getitem__, 1 << 20) == [
        Read("big", 10 * PAGE, 100)
    ]


def test_ranges_cut_the_recording_into_runs_of_about_the_limit() -> None:
    recorded = [RecordedObject(f"o{i}", start=i * 100, size=100) for i in range(5)]
    runs = list(ranges(recorded, 250))
    assert [[item.object for item in run] for run in runs] == [["o0", "o1", "o2"], ["o3", "o4"]]


def test_a_stored_recording_reads_back_the_same() -> None:
    recorded = [
        RecordedObject("small", 0, 10),
        RecordedPiece("big", SIZES["big"], PAGE, PAGE, "d1", 10, 20),
    ]
    assert parse(document(recorded)) == recorded


def test_a_recording_of_another_format_is_not_used() -> None:
    stored = json.dumps({"format": READS_FORMAT - 1, "reads": [["chunk", 0, 10]]}).encode()
    assert parse(stored) is None
