"""Log lines shipped by workers, kept per app so `ember app logs` can show the past."""

from __future__ import annotations

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


class LogStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def append(self, lines: Sequence[LogLine]) -> list[LogLine]:
        """Store lines; returns them with their ids."""
        if not lines:
            return []
        stored = []
        async with self._engine.begin() as conn:
            for line in lines:
                result = await conn.execute(
                    schema.logs.insert().values(
                        app_id=line.app_id,
                        function_name=line.function_name,
                        container_id=line.container_id,
                        fd=line.fd,
                        data=line.data,
                        timestamp=line.timestamp,
                    )
                )
                stored.append(
                    LogLine(
                        result.inserted_primary_key[0],
                        line.app_id,
                        line.function_name,
                        line.container_id,
                        line.fd,
                        line.data,
                        line.timestamp,
                    )
                )
        return stored

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
