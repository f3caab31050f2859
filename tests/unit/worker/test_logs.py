"""Reading a container's output files: every stream, whole lines, each with its fd."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from ember.proto import api_pb2
from ember.worker.logs import ContainerLogs, LogShipper


def lines(logs: ContainerLogs, final: bool = False) -> list[tuple[int, str]]:
    return [(entry.fd, entry.data) for entry in logs.read_new(final)]


def test_every_stream_is_read_with_its_fd_and_partial_lines_wait(tmp_path: Path) -> None:
    files = {name: tmp_path / name for name in ("out", "err", "harness-out", "harness-err")}
    for path in files.values():
        path.touch()
    streams = [(1, files["out"]), (2, files["err"]), (1, files["harness-out"])]
    streams.append((2, files["harness-err"]))
    logs = ContainerLogs("ap-1", "f", "ta-1", streams)
    files["out"].write_text("before the harness\n")
    files["harness-out"].write_text("printed by f\nhalf a li")
    files["harness-err"].write_text("warned\n")
    assert lines(logs) == [(1, "before the harness\n"), (1, "printed by f\n"), (2, "warned\n")]
    with files["harness-out"].open("a") as file:
        file.write("ne\n")
    assert lines(logs) == [(1, "half a line\n")]
    files["err"].write_text("no newline at the end")
    assert lines(logs) == []
    assert lines(logs, final=True) == [(2, "no newline at the end")]


def test_the_harness_writes_its_output_straight_to_the_named_files(tmp_path: Path) -> None:
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    stdout.touch()
    stderr.touch()
    code = (
        "import os, sys\n"
        "from ember.harness.runtime import output_to_files\n"
        "output_to_files()\n"
        "print('from python')\n"
        "print('to stderr', file=sys.stderr)\n"
        "os.system('echo from a subprocess')\n"
    )
    env = {**os.environ, "EMBER_STDOUT": str(stdout), "EMBER_STDERR": str(stderr)}
    env["PYTHONUNBUFFERED"] = "1"  # as in a container: lines in the order they are printed
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout == "" and result.stderr == ""
    assert stdout.read_text() == "from python\nfrom a subprocess\n"
    assert stderr.read_text() == "to stderr\n"


def open_files_under(directory: Path) -> list[str]:
    names = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own, closed since
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
    return [name for name in names if name.startswith(str(directory))]


def test_a_file_made_after_watching_began_is_read_from_its_start(tmp_path: Path) -> None:
    logs = ContainerLogs("ap-1", "f", "ta-1", [(1, tmp_path / "out")])
    assert lines(logs) == []
    (tmp_path / "out").write_text("late\n")
    assert lines(logs) == [(1, "late\n")]


async def test_the_final_flush_closes_the_containers_files(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("one\n")
    (tmp_path / "err").write_text("")
    sent: list[str] = []

    class Conn:
        workers = type("Workers", (), {"LogsPut": None})

        async def call(self, _method: object, request: api_pb2.LogsPutRequest) -> None:
            sent.extend(entry.data for entry in request.entries)

    shipper = LogShipper(Conn())  # type: ignore[arg-type]
    shipper.watch(
        "ta-1", ContainerLogs("ap-1", "f", "ta-1", [(1, tmp_path / "out"), (2, tmp_path / "err")])
    )
    await shipper.flush("ta-1")
    assert sent == ["one\n"] and len(open_files_under(tmp_path)) == 2
    await shipper.flush("ta-1", final=True)
    assert open_files_under(tmp_path) == []
