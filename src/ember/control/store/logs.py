"""Log lines shipped by workers, kept per app so `ember app logs` can show the past."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from ember.control.store import schema
from ember.control.store.engine import Engine


@dataclass(frozen=True)
class LogLine:
    log_id: int
    app_id: str
    function_name: str
    container_id: str
    fd: int
    data: str
    timestamp: float


_INSERT = schema.logs.insert().returning(schema.logs.c.id, sort_by_parameter_order=True)


class LogStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def append(self, lines: Sequence[LogLine]) -> list[LogLine]:
        """Store lines (in one statement); returns them with their ids."""
        if not lines:
            return []
        rows = [
            {
                "app_id": line.app_id,
                "function_name": line.function_name,
                "container_id": line.container_id,
                "fd": line.fd,
                "data": line.data,
                "timestamp": line.timestamp,
            }
            for line in lines
        ]
        async with self._engine.begin() as conn:
            ids = (await conn.execute(_INSERT, rows)).scalars().all()
        return [
            dataclasses.replace(line, log_id=log_id)
            for line, log_id in zip(lines, ids, strict=True)
        ]

    async def after(self, app_id: str, after_id: int, limit: int = 1000) -> list[LogLine]:
        g = schema.logs.c
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(
                    g.id, g.app_id, g.function_name, g.container_id, g.fd, g.data, g.timestamp
                )
                .where(g.app_id == app_id, g.id > after_id)
                .order_by(g.id)
                .limit(limit)
            )
            return [LogLine(*row) for row in rows]

    async def delete_before(self, cutoff: float, limit: int) -> int:
        """Delete up to `limit` of the oldest lines, stopping at the first one stamped at or
        after `cutoff`; returns how many went. Ids grow with arrival, so the old lines are a
        prefix of the table and this reads no further than it deletes (no index on time)."""
        g = schema.logs.c
        async with self._engine.begin() as conn:
            rows = (
                await conn.execute(sa.select(g.id, g.timestamp).order_by(g.id).limit(limit))
            ).all()
            last = None
            for log_id, timestamp in rows:
                if timestamp >= cutoff:
                    break
                last = log_id
            if last is None:
                return 0
            return (await conn.execute(schema.logs.delete().where(g.id <= last))).rowcount
