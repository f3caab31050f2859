"""The worker's end of one container's harness socket (see `ember.proto.harness_frames`).

What arrives is untrusted (the user's code shares the harness's process): it is decoded as data
only, and a frame that is not a well-formed message the harness may send raises `FrameError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from ember.proto import harness_frames as frames


class HarnessLink:
    """Listens on a unix socket for the one harness of a container, then exchanges frames."""

    def __init__(self) -> None:
        self._connected: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.get_running_loop().create_future()
        )
        self._server: asyncio.Server | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def listen(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._accept, path=str(path))
        path.chmod(0o666)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connected.done():
            writer.close()  # one harness per container
            return
        self._connected.set_result((reader, writer))

    async def connected(self) -> None:
        self._reader, self._writer = await self._connected

    async def send(self, message: frames.Message) -> None:
        assert self._writer is not None
        self._writer.write(frames.encode(message))
        await self._writer.drain()

    async def receive(self) -> frames.Message | None:
        """The next message, or None once the harness has gone; `FrameError` for a frame that is
        not a message the harness may send (its length is checked before its body is read)."""
        assert self._reader is not None
        try:
            header = await self._reader.readexactly(frames.HEADER.size)
            (length,) = frames.HEADER.unpack(header)
            frames.check_length(length)
            body = await self._reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return frames.decode(body, frames.FROM_HARNESS)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._server is not None:
            self._server.close()
