"""Live log streams: lines from workers are stored, then handed to everyone following the app."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence

from ember.control.store import LogLine, Store


class LogHub:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._followers: dict[str, set[asyncio.Queue[LogLine]]] = defaultdict(set)

    async def append(self, lines: Sequence[LogLine]) -> None:
        for line in await self._store.logs.append(lines):
            for queue in self._followers.get(line.app_id, ()):
                queue.put_nowait(line)

    async def read(self, app_id: str, after_id: int, follow: bool) -> AsyncIterator[LogLine]:
        """Stored lines after `after_id`, then (with `follow`) new ones as they arrive."""
        queue: asyncio.Queue[LogLine] = asyncio.Queue()
        if follow:  # before reading the past, so no line falls between the two
            self._followers[app_id].add(queue)
        try:
            while batch := await self._store.logs.after(app_id, after_id):
                for line in batch:
                    yield line
                after_id = batch[-1].log_id
            while follow:
                line = await queue.get()
                if line.log_id > after_id:
                    after_id = line.log_id
                    yield line
        finally:
            self._followers[app_id].discard(queue)
