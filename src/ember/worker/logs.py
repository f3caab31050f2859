"""Shipping container output to the control plane.

The runtime writes each container's stdout and stderr to files, and so does the harness (it points
its own stdout and stderr at files of the worker's, because runc copies a container's output
through pipes: a line printed just before a result could reach the runtime's files after it). A
`ContainerLogs` reads what is new in all of them, a line at a time, and the `LogShipper` sends
batches every `FLUSH_S`. Before a result is reported the container's logs are read and sent
first (after a send under way), so a caller sees what an input printed before it sees the
input's result.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from ember.client import Connection
from ember.proto import api_pb2

FLUSH_S = 0.1
MAX_LINE = 16 << 10  # a line longer than this is shipped in pieces


class ContainerLogs:
    def __init__(
        self,
        app_id: str,
        function_name: str,
        container_id: str,
        streams: Sequence[tuple[int, Path]],  # (1 for stdout or 2 for stderr, the file)
    ) -> None:
        self._template = api_pb2.LogEntry(
            app_id=app_id, function_name=function_name, container_id=container_id
        )
        self._streams = list(streams)
        self._offsets = [0] * len(self._streams)
        self._partial = [b""] * len(self._streams)
        # Each file is kept open once it exists: before every result the worker asks whether
        # anything is new, and the size of an open file costs less to read than a path's (the
        # four `stat` calls were 8% of the worker's time in a round trip).
        self._files: list[BinaryIO | None] = [None] * len(self._streams)

    def read_new(self, final: bool = False) -> list[api_pb2.LogEntry]:
        entries = []
        for index, (fd, _path) in enumerate(self._streams):
            file = self._file(index)
            if file is None:
                continue
            if os.fstat(file.fileno()).st_size <= self._offsets[index] and not final:
                continue  # nothing new: the common case
            file.seek(self._offsets[index])
            data = file.read()
            self._offsets[index] += len(data)
            data = self._partial[index] + data
            lines = data.splitlines(keepends=True)
            self._partial[index] = b""
            if lines and not lines[-1].endswith(b"\n") and not final and len(lines[-1]) < MAX_LINE:
                self._partial[index] = lines.pop()
            now = time.time()
            for line in lines:
                entry = api_pb2.LogEntry()
                entry.CopyFrom(self._template)
                entry.fd = fd
                entry.data = line.decode(errors="replace")
                entry.timestamp = now
                entries.append(entry)
        return entries

    def _file(self, index: int) -> BinaryIO | None:
        file = self._files[index]
        if file is None:
            try:
                file = self._files[index] = self._streams[index][1].open("rb")
            except FileNotFoundError:  # not written yet
                return None
        return file

    def close(self) -> None:
        for file in self._files:
            if file is not None:
                file.close()
        self._files = [None] * len(self._streams)


class LogShipper:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._containers: dict[str, ContainerLogs] = {}
        # Held from reading lines until they are stored: a flush before a result must not pass
        # lines the periodic send has read but not stored yet.
        self._sending = asyncio.Lock()

    def watch(self, container_id: str, logs: ContainerLogs) -> None:
        self._containers[container_id] = logs

    async def flush(self, container_id: str, final: bool = False) -> None:
        logs = self._containers.get(container_id)
        try:
            if logs is not None:
                async with self._sending:
                    await self._send(logs.read_new(final))
        finally:
            if final:
                self._containers.pop(container_id, None)
                if logs is not None:
                    logs.close()

    async def _send(self, entries: list[api_pb2.LogEntry]) -> None:
        if entries:
            await self._conn.call(
                self._conn.workers.LogsPut, api_pb2.LogsPutRequest(entries=entries)
            )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            async with self._sending:
                entries = [e for logs in list(self._containers.values()) for e in logs.read_new()]
                with contextlib.suppress(Exception):  # logs must never stop the worker
                    await self._send(entries)
