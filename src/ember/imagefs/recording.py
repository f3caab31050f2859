"""What the first start of an image read, noted as it reads and kept as the image's recording.

While a start records, the FUSE server tells a `ReadLog` every small file opened and every read
of a large file; `ReadLog.since` gives them back in the order they came. `pieces` turns the reads
of large files into runs of whole pages, each page once. The recording stored beside the image's
prefetch pack (`document`, `parse`) says where each small file and each piece is in that pack;
a prefetch reads the pack in `ranges` of consecutive items.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import NamedTuple

from ember.imagefs.index import ContentIndex

READS_FORMAT = 4  # what a recording holds; one of another format is made again
PAGE = 4096  # the unit in which the parts of a large file on a host are known


class Read(NamedTuple):
    """Bytes of a large file a container read."""

    file: str
    offset: int
    size: int


@dataclass(frozen=True)
class RecordedObject:
    """A small file (a file of one extent) a start of an image opened: where its content is in
    the image's prefetch pack (compressed alone; checked against the object's digest)."""

    object: str
    start: int
    size: int

    @property
    def key(self) -> str:
        return object_key(self.object)


@dataclass(frozen=True)
class RecordedPiece:
    """Bytes of a large file a start of an image read: where they are in the image's prefetch
    pack (compressed alone) and the digest they are checked against."""

    file: str
    file_size: int
    offset: int
    length: int
    digest: str
    start: int
    size: int

    @property
    def key(self) -> str:
        """What a prefetch claims it by (never a chunk digest)."""
        return f"{self.file}:{self.offset}"


Recorded = RecordedObject | RecordedPiece


def object_key(file_digest: str) -> str:
    """What a prefetch claims a small file by (never a chunk digest)."""
    return f"object:{file_digest}"


class ReadLog:
    """The small files opened and the reads of large files while some start records. Safe to
    call from many threads at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._images: set[str] = set()  # images a start is recording
        self._reads: list[tuple[float, str, int, int]] = []  # (time, file, offset, size)
        self._opens: list[tuple[float, str]] = []  # (time, small file)

    @property
    def active(self) -> bool:
        """Whether some start records (then what a container reads must reach the FUSE
        server)."""
        return bool(self._images)

    def start(self, image_id: str) -> None:
        with self._lock:
            self._images.add(image_id)

    def stop(self, image_id: str) -> bool:
        """The image's recording is over; True if no other is left. Then what was noted is
        dropped: it was taken by `since` and saved, or never will be."""
        with self._lock:
            self._images.discard(image_id)
            if self._images:
                return False
            self._reads.clear()
            self._opens.clear()
            return True

    def note_read(self, file_digest: str, offset: int, size: int) -> None:
        if self._images:
            with self._lock:
                self._reads.append((time.monotonic(), file_digest, offset, size))

    def note_open(self, file_digest: str) -> None:
        if self._images:
            with self._lock:
                self._opens.append((time.monotonic(), file_digest))

    def since(self, since: float, image: ContentIndex) -> list[str | Read]:
        """What starts of `image` read since the monotonic time `since`, in the order they read
        it, each once: the small files opened (by digest) and the bytes of large files read."""
        with self._lock:
            opened, read = list(self._opens), list(self._reads)
        events: list[tuple[float, str | Read]] = [
            (at, digest) for at, digest in opened if at >= since and image.file(digest) is not None
        ]
        events += [
            (at, Read(file, offset, size))
            for at, file, offset, size in read
            if at >= since and image.file(file) is not None
        ]
        events.sort(key=lambda event: event[0])
        return list(dict.fromkeys(event for _, event in events))


def pieces(reads: list[str | Read], size_of: Callable[[str], int], limit: int) -> list[str | Read]:
    """`reads` with the bytes of large files as runs of whole pages, each page once, where
    first read; a run that goes on from the one before it in the same file joins it, up to
    `limit` bytes."""
    found: list[str | Read] = []
    seen: dict[str, bytearray] = {}  # pages of each file already in a piece
    for read in reads:
        if isinstance(read, str):
            found.append(read)
            continue
        size = size_of(read.file)
        pages = seen.setdefault(read.file, bytearray(-(-size // PAGE)))
        first, last = read.offset // PAGE, min(-(-(read.offset + read.size) // PAGE), len(pages))
        while first < last:
            first = pages.find(0, first, last)
            if first < 0:
                break
            end = pages.find(1, first, last)
            end = last if end < 0 else end
            pages[first:end] = b"\x01" * (end - first)
            offset, length = first * PAGE, min(end * PAGE, size) - first * PAGE
            before = found[-1] if found else None
            if (
                isinstance(before, Read)
                and before.file == read.file
                and before.offset + before.size == offset
                and before.size + length <= limit
            ):
                found[-1] = Read(read.file, before.offset, before.size + length)
            else:
                found.append(Read(read.file, offset, length))
            first = end
    return found


def ranges(recorded: list[Recorded], limit: int) -> Iterator[list[Recorded]]:
    """The recording in runs of consecutive items of about `limit` stored bytes."""
    run: list[Recorded] = []
    for item in recorded:
        run.append(item)
        if item.start + item.size - run[0].start >= limit:
            yield run
            run = []
    if run:
        yield run


def document(recorded: list[Recorded]) -> bytes:
    """The recording as stored."""
    rows = [asdict(item) for item in recorded]
    return json.dumps({"format": READS_FORMAT, "reads": rows}).encode()


def parse(stored: bytes) -> list[Recorded] | None:
    """A stored recording; None if an earlier version made it (the image is recorded again)."""
    found = json.loads(stored)
    if not isinstance(found, dict) or found.get("format") != READS_FORMAT:
        return None
    return [
        RecordedPiece(**row) if "file" in row else RecordedObject(**row) for row in found["reads"]
    ]
