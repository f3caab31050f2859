"""A harness started before its function exists: the app's source appears in /app later (a
standby container), and the interpreter, which listed that directory when it started, must see
it even when the directory's mtime did not move (within one clock tick it may not)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from ember.proto import harness_frames as frames
from ember.sdk.serialization import deserialize, serialize


def receive(connection: socket.socket) -> frames.Message:
    reader = connection.makefile("rb")
    (length,) = frames.HEADER.unpack(reader.read(frames.HEADER.size))
    return frames.decode(reader.read(length), frames.FROM_HARNESS)


def test_a_standby_harness_loads_source_that_appeared_after_it_started(tmp_path: Path) -> None:
    source_dir = tmp_path / "app"
    source_dir.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "harness.sock"))
    listener.listen(1)
    listener.settimeout(30)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(source_dir), *sys.path]),
        "EMBER_SOCKET": str(tmp_path / "harness.sock"),
        "EMBER_SOURCE_DIR": str(source_dir),
        "EMBER_STANDBY": "1",
    }
    harness = subprocess.Popen([sys.executable, "-m", "ember.harness"], env=env)
    try:
        connection, _ = listener.accept()  # the interpreter has listed the empty source dir
        listed = source_dir.stat()
        (source_dir / "late_app.py").write_text("def add_one(x):\n    return x + 1\n")
        os.utime(source_dir, ns=(listed.st_atime_ns, listed.st_mtime_ns))
        connection.sendall(
            frames.encode(frames.Load({"EMBER_MODULE": "late_app", "EMBER_QUALNAME": "add_one"}))
        )
        assert receive(connection) == frames.Ready()
        connection.sendall(frames.encode(frames.Input("in-1", serialize(((41,), {})))))
        result = receive(connection)
        assert isinstance(result, frames.Result) and result.data is not None
        assert (result.input_id, result.status) == ("in-1", frames.SUCCESS)
        assert deserialize(result.data) == 42
        connection.close()
        assert harness.wait(timeout=30) == 0
    finally:
        harness.kill()
        listener.close()
