"""The harness: connect to the worker, wait for a function, import it, run inputs until the
socket closes.

The container's environment names the worker's socket (`EMBER_SOCKET`) and where the app's
source will be (`EMBER_SOURCE_DIR`, first on `sys.path` so the app's own modules import). The
function comes later, in the worker's `load` frame: variables to add to the environment, among
them `EMBER_MODULE` and `EMBER_QUALNAME` (where the function is). A standby container
(`EMBER_STANDBY`) may wait a long time for it, so it imports the serializer first.
"""

from __future__ import annotations

import errno
import importlib
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from ember.proto import harness_frames as frames
from ember.sdk import code_kinds

CONNECT_TIMEOUT_S = 10.0


class WorkerLink:
    """The harness's end of the socket: blocking frames in and out."""

    def __init__(self, path: str) -> None:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self._socket.connect(path)
                break
            except OSError:
                self._socket.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self._reader = self._socket.makefile("rb")

    def send(self, message: frames.Message) -> None:
        self.send_frame(frames.encode(message))

    def send_frame(self, frame: bytes) -> None:
        self._socket.sendall(frame)

    def receive(self) -> frames.Message | None:
        header = self._reader.read(frames.HEADER.size)
        if len(header) < frames.HEADER.size:
            return None  # the worker closed the socket: time to stop
        (length,) = frames.HEADER.unpack(header)
        frames.check_length(length)
        return frames.decode(self._reader.read(length), frames.TO_HARNESS)


def _remote_traceback(error: BaseException) -> str:
    """The traceback from the user's code down, without the harness's own frames."""
    import traceback  # only once something failed: it is slow to import

    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb))


def _describe(error: BaseException) -> str:
    notes = getattr(error, "__notes__", None) or []
    return "\n".join([f"{type(error).__name__}: {error}", *notes])


def load_function() -> Callable[..., Any]:
    sys.path.insert(0, os.environ.get("EMBER_SOURCE_DIR", "/app"))
    target: Any = importlib.import_module(os.environ["EMBER_MODULE"])
    for part in os.environ["EMBER_QUALNAME"].split("."):
        target = getattr(target, part)
    get_raw_f = getattr(target, "get_raw_f", None)
    return get_raw_f() if get_raw_f is not None else target


def _iterate(
    raw_f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Iterator[Any]:
    """Items of a generator function, sync or async."""
    if code_kinds.is_async_generator_function(raw_f):
        import asyncio

        loop = asyncio.new_event_loop()
        generator = raw_f(*args, **kwargs)
        try:
            while True:
                try:
                    yield loop.run_until_complete(generator.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            loop.close()
    else:
        yield from raw_f(*args, **kwargs)


def _call(raw_f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if code_kinds.is_coroutine_function(raw_f):
        import asyncio

        return asyncio.run(raw_f(*args, **kwargs))
    return raw_f(*args, **kwargs)


def run_input(
    link: WorkerLink, raw_f: Callable[..., Any], input_id: str, pickled_args: bytes
) -> None:
    from ember.sdk.serialization import deserialize, serialize

    is_generator = code_kinds.is_generator_function(raw_f)
    gen_index = 0
    try:
        args, kwargs = deserialize(pickled_args)
        if is_generator:
            for item in _iterate(raw_f, args, kwargs):
                data = serialize(item, what="yielded item")
                link.send(frames.Result(input_id, gen_index, frames.SUCCESS, data, "", ""))
                gen_index += 1
            status, data = frames.GENERATOR_DONE, None
        else:
            value = _call(raw_f, args, kwargs)
            status, data = frames.SUCCESS, serialize(value, what="return value")
        frame = frames.encode(frames.Result(input_id, gen_index, status, data, "", ""))
    except Exception as error:
        frame = _failure(input_id, gen_index, error)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    link.send_frame(frame)


def _failure(input_id: str, gen_index: int, error: Exception) -> bytes:
    """The frame of a failed input; without the pickled exception if that is too large to send
    (its text and traceback still are)."""
    from ember.sdk.serialization import serialize_exception

    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        error.add_note(
            f"The container's disk is full: its limit is {os.environ.get('EMBER_DISK_MB')} MiB; "
            "ask for more with @app.function(ephemeral_disk=...)."
        )
    text, traceback = _describe(error), _remote_traceback(error)
    try:
        pickled = serialize_exception(error)
        return frames.encode(
            frames.Result(input_id, gen_index, frames.FAILURE, pickled, text, traceback)
        )
    except frames.FrameError:
        return frames.encode(
            frames.Result(input_id, gen_index, frames.FAILURE, None, text, traceback)
        )


def output_to_files() -> None:
    """Point stdout and stderr at the files the worker names, written straight through: runc
    copies the container's own stdout and stderr through pipes, so a line printed just before a
    result could reach the worker after the result does."""
    for fd, variable in ((1, "EMBER_STDOUT"), (2, "EMBER_STDERR")):
        path = os.environ.get(variable)
        if path:
            file = os.open(path, os.O_WRONLY | os.O_APPEND)
            os.dup2(file, fd)
            os.close(file)


def main() -> None:
    output_to_files()
    link = WorkerLink(os.environ["EMBER_SOCKET"])
    if os.environ.get("EMBER_STANDBY"):
        import ember.sdk.serialization
    load = link.receive()
    if load is None:
        return  # a standby the worker no longer needs
    assert isinstance(load, frames.Load), "the worker sends Load first"
    os.environ.update(load.environment)
    # The source appeared in /app after the interpreter listed it (a directory's mtime, which
    # decides whether that listing is stale, may not have moved within a clock tick).
    importlib.invalidate_caches()
    try:
        raw_f = load_function()
    except BaseException as error:
        link.send(frames.InitFailure(_describe(error), _remote_traceback(error)))
        sys.exit(1)
    link.send(frames.Ready())
    # Serialization (cloudpickle) loads while the worker fetches the first input, not after.
    import ember.sdk.serialization  # noqa: F401

    while (message := link.receive()) is not None:
        assert isinstance(message, frames.Input), "after Load the worker sends only inputs"
        run_input(link, raw_f, message.input_id, message.args)
