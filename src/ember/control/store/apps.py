"""Apps and their functions.

An ephemeral app lives while its `ember run` heartbeats (or until stopped, if detached). A deploy
makes a new version of a named app: the new version becomes the one `from_name` finds, and the
previous version stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from ember import errors
from ember.control.ids import new_id
from ember.control.store import schema
from ember.control.store.engine import Connection, Engine
from ember.proto import api_pb2

LIVE_STATES = (
    api_pb2.APP_STATE_EPHEMERAL,
    api_pb2.APP_STATE_DETACHED,
    api_pb2.APP_STATE_DEPLOYED,
)


@dataclass(frozen=True)
class App:
    app_id: str
    name: str
    state: int
    version: int
    source_blob_id: str
    created_at: float
    last_heartbeat_at: float


@dataclass(frozen=True)
class Function:
    function_id: str
    app_id: str
    definition: api_pb2.FunctionDefinition


def _app(row: sa.Row) -> App:
    return App(
        row.id,
        row.name,
        row.state,
        row.version,
        row.source_blob_id,
        row.created_at,
        row.last_heartbeat_at,
    )


def _function(row: sa.Row) -> Function:
    return Function(row.id, row.app_id, api_pb2.FunctionDefinition.FromString(row.definition))


class AppStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def create(self, name: str, state: int, now: float, client_key: str = "") -> str:
        """A new app; with a `client_key` seen before, the app made then (a retried request)."""
        a = schema.apps.c
        async with self._engine.begin() as conn:
            if client_key:
                existing = (
                    await conn.execute(sa.select(a.id).where(a.client_key == client_key))
                ).scalar_one_or_none()
                if existing is not None:
                    return str(existing)
            app_id = new_id("ap")
            await conn.execute(
                schema.apps.insert().values(
                    id=app_id,
                    name=name,
                    state=state,
                    created_at=now,
                    last_heartbeat_at=now,
                    client_key=client_key or None,
                )
            )
        return app_id

    async def publish(
        self,
        app_id: str,
        source_blob_id: str,
        definitions: Sequence[api_pb2.FunctionDefinition],
    ) -> dict[str, str]:
        """Attach source and functions to a live app; returns function ids by name."""
        async with self._engine.begin() as conn:
            app = await self._get(conn, app_id)
            if app.state not in LIVE_STATES:
                raise errors.InvalidError(f"app {app.name!r} ({app_id}) has stopped")
            await conn.execute(
                schema.apps.update()
                .where(schema.apps.c.id == app_id)
                .values(source_blob_id=source_blob_id)
            )
            return await self._add_functions(conn, app_id, definitions)

    async def deploy(
        self,
        name: str,
        source_blob_id: str,
        definitions: Sequence[api_pb2.FunctionDefinition],
        now: float,
    ) -> tuple[App, dict[str, str], list[str]]:
        """Make a new deployed version of `name`; returns it, its function ids and the app ids
        of the versions it replaced (now stopped)."""
        a = schema.apps.c
        async with self._engine.begin() as conn:
            previous = (
                await conn.execute(
                    sa.select(a.id, a.version)
                    .where(a.name == name, a.version > 0)
                    .order_by(a.version.desc())
                )
            ).all()
            version = previous[0].version + 1 if previous else 1
            replaced = (
                (
                    await conn.execute(
                        sa.select(a.id).where(a.name == name, a.state == api_pb2.APP_STATE_DEPLOYED)
                    )
                )
                .scalars()
                .all()
            )
            if replaced:
                await conn.execute(
                    schema.apps.update()
                    .where(a.id.in_(replaced))
                    .values(state=api_pb2.APP_STATE_STOPPED, stopped_at=now)
                )
            app_id = new_id("ap")
            await conn.execute(
                schema.apps.insert().values(
                    id=app_id,
                    name=name,
                    state=api_pb2.APP_STATE_DEPLOYED,
                    version=version,
                    source_blob_id=source_blob_id,
                    created_at=now,
                    last_heartbeat_at=now,
                )
            )
            function_ids = await self._add_functions(conn, app_id, definitions)
            app = await self._get(conn, app_id)
        return app, function_ids, list(replaced)

    async def _add_functions(
        self,
        conn: Connection,
        app_id: str,
        definitions: Sequence[api_pb2.FunctionDefinition],
    ) -> dict[str, str]:
        f = schema.functions.c
        rows = await conn.execute(sa.select(f.name, f.id).where(f.app_id == app_id))
        existing = {name: function_id for name, function_id in rows}
        # Publishing again (a client retrying a lost reply) adds only what is missing.
        ids = {d.name: existing.get(d.name) or new_id("fu") for d in definitions}
        definitions = [d for d in definitions if d.name not in existing]
        if definitions:
            await conn.execute(
                schema.functions.insert(),
                [
                    {
                        "id": ids[d.name],
                        "app_id": app_id,
                        "name": d.name,
                        "definition": d.SerializeToString(),
                    }
                    for d in definitions
                ],
            )
        return ids

    async def _get(self, conn: Connection, app_id: str) -> App:
        row = (
            await conn.execute(sa.select(schema.apps).where(schema.apps.c.id == app_id))
        ).one_or_none()
        if row is None:
            raise errors.NotFoundError(f"app {app_id!r} not found")
        return _app(row)

    async def get(self, app_id: str) -> App:
        async with self._engine.connect() as conn:
            return await self._get(conn, app_id)

    async def find_live(self, name: str) -> App:
        """The live app of this name: the deployed version, else the newest running one."""
        a = schema.apps.c
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(schema.apps)
                    .where(a.name == name, a.state.in_(LIVE_STATES))
                    .order_by((a.state == api_pb2.APP_STATE_DEPLOYED).desc(), a.created_at.desc())
                    .limit(1)
                )
            ).one_or_none()
        if row is None:
            raise errors.NotFoundError(
                f"no running or deployed app named {name!r}; deploy it with `ember deploy`"
            )
        return _app(row)

    async def named(self, app_id: str, name: str) -> App:
        """The app a command names: by id, in any state, else by name, the live one (as
        `find_live`); one that does not exist is a NotFoundError saying where to look."""
        if app_id:
            try:
                return await self.get(app_id)
            except errors.NotFoundError:
                raise errors.NotFoundError(
                    f"no app {app_id}; see `ember app list --all` for the apps there are"
                ) from None
        try:
            return await self.find_live(name)
        except errors.NotFoundError:
            raise errors.NotFoundError(
                f"no running or deployed app named {name!r}; see `ember app list` for the apps "
                "running now, and `ember app list --all` for the ids of stopped ones"
            ) from None

    async def heartbeat(self, app_ids: Sequence[str], now: float) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                schema.apps.update()
                .where(schema.apps.c.id.in_(app_ids))
                .values(last_heartbeat_at=now)
            )

    async def stop(self, app_ids: Sequence[str], now: float) -> list[str]:
        """Stop live apps; returns the ids that were live."""
        a = schema.apps.c
        async with self._engine.begin() as conn:
            rows = await conn.execute(
                schema.apps.update()
                .where(a.id.in_(app_ids), a.state.in_(LIVE_STATES))
                .values(state=api_pb2.APP_STATE_STOPPED, stopped_at=now)
                .returning(a.id)
            )
            return list(rows.scalars())

    async def list(self, include_stopped: bool) -> list[App]:
        a = schema.apps.c
        query = sa.select(schema.apps).order_by(a.created_at)
        if not include_stopped:
            query = query.where(a.state.in_(LIVE_STATES))
        async with self._engine.connect() as conn:
            return [_app(row) for row in await conn.execute(query)]

    async def ephemeral_silent_since(self, before: float) -> list[str]:
        """Ephemeral apps whose client stopped heartbeating before a time."""
        a = schema.apps.c
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(a.id).where(
                    a.state == api_pb2.APP_STATE_EPHEMERAL, a.last_heartbeat_at < before
                )
            )
            return list(rows.scalars())

    async def function(self, function_id: str) -> Function:
        f = schema.functions.c
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(f.id, f.app_id, f.definition).where(f.id == function_id)
                )
            ).one_or_none()
        if row is None:
            raise errors.NotFoundError(f"function {function_id!r} not found")
        return _function(row)

    async def functions_of(self, app_ids: Sequence[str]) -> list[Function]:
        f = schema.functions.c
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(f.id, f.app_id, f.definition).where(f.app_id.in_(app_ids))
            )
            return [_function(row) for row in rows]

    async def find_function(self, app_name: str, function_name: str) -> Function:
        app = await self.find_live(app_name)
        f = schema.functions.c
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(f.id, f.app_id, f.definition).where(
                        f.app_id == app.app_id, f.name == function_name
                    )
                )
            ).one_or_none()
        if row is None:
            raise errors.NotFoundError(f"app {app_name!r} has no function named {function_name!r}")
        return _function(row)
