"""Workers and the containers placed on them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from ember.control.store import schema
from ember.control.store.dialect import insert_ignore
from ember.control.store.engine import Engine

LIVE = (schema.STARTING, schema.RUNNING, schema.STOPPING)


@dataclass(frozen=True)
class Worker:
    worker_id: str
    hostname: str
    cpu: float
    memory_mb: int
    last_heartbeat_at: float


@dataclass(frozen=True)
class Container:
    container_id: str
    app_id: str
    function_id: str
    worker_id: str
    state: str
    cpu: float
    memory_mb: int
    created_at: float


class ClusterStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def register_worker(
        self, worker_id: str, hostname: str, cpu: float, memory_mb: int, now: float
    ) -> None:
        w = schema.workers.c
        async with self._engine.begin() as conn:
            await conn.execute(
                insert_ignore(conn, schema.workers).values(
                    id=worker_id,
                    hostname=hostname,
                    cpu=cpu,
                    memory_mb=memory_mb,
                    registered_at=now,
                    last_heartbeat_at=now,
                )
            )
            await conn.execute(
                schema.workers.update()
                .where(w.id == worker_id)
                .values(hostname=hostname, cpu=cpu, memory_mb=memory_mb, last_heartbeat_at=now)
            )

    async def heartbeat_worker(self, worker_id: str, now: float) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                schema.workers.update()
                .where(schema.workers.c.id == worker_id)
                .values(last_heartbeat_at=now)
            )

    async def workers(self) -> list[Worker]:
        w = schema.workers.c
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(w.id, w.hostname, w.cpu, w.memory_mb, w.last_heartbeat_at)
            )
            return [Worker(*row) for row in rows]

    async def add_container(self, container: Container) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                schema.containers.insert().values(
                    id=container.container_id,
                    app_id=container.app_id,
                    function_id=container.function_id,
                    worker_id=container.worker_id,
                    state=container.state,
                    cpu=container.cpu,
                    memory_mb=container.memory_mb,
                    created_at=container.created_at,
                )
            )

    async def set_container_state(
        self, container_ids: Sequence[str], state: str, now: float, reason: str = ""
    ) -> None:
        if not container_ids:
            return
        values: dict[str, object] = {"state": state}
        if state == schema.STOPPED:
            values.update(stopped_at=now, exit_reason=reason)
        async with self._engine.begin() as conn:
            await conn.execute(
                schema.containers.update()
                .where(schema.containers.c.id.in_(container_ids))
                .values(**values)
            )

    async def live_containers(self) -> list[Container]:
        c = schema.containers.c
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(
                    c.id,
                    c.app_id,
                    c.function_id,
                    c.worker_id,
                    c.state,
                    c.cpu,
                    c.memory_mb,
                    c.created_at,
                ).where(c.state.in_(LIVE))
            )
            return [Container(*row) for row in rows]
