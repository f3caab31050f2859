"""Opening the database and bringing its schema up to date.

SQLite (the embedded default) runs in WAL mode with `synchronous=NORMAL`: a commit survives the
control plane being killed, which is the durability promise (an input is stored before the call
that submitted it returns). Its statements run inline on the event loop through one connection:
they take tens of microseconds and never wait on a network, while handing each one to a thread
(aiosqlite) cost more than the statement itself (3.1 ms against 0.4 ms for a call's inserts,
measured here). PostgreSQL URLs (`postgresql+asyncpg://`) use SQLAlchemy's async engine. The two
present the same small interface, `Engine`, to the store.

The statements every `.remote()` runs are `Prepared`: compiled once, and on SQLite run straight on
the driver's cursor. Through SQLAlchemy's execution (its cache key, parameter and result set-up)
a call's two transactions took 335 us at p50, prepared 190 us, measured here (SQLite's own work
is most of the rest). Every other statement goes through SQLAlchemy.

Checkpoints (copying committed pages from the WAL into the database file) run on a thread of
their own with a connection of their own (`_Checkpointer`), every 50 ms, so that the WAL is
rarely long enough for SQLite's own checkpoint inside a commit (at 1,000 pages), which runs on
the event loop: left to SQLite, one ran every few dozen calls (a call's inserts took 5 ms at p99
against 0.4 ms without, measured here). SQLite's still bounds the WAL in a burst of writes that
outruns the thread.

Space: expired rows are deleted (`ember.control.expiry`), which leaves SQLite free pages. They
are reused by later inserts, but a file that held two large maps would stay that large; so
SQLite runs with incremental auto-vacuum, and `reclaim_space` gives free pages back to the file
system a bounded number at a time. (A plain `VACUUM` rewrites the whole file while holding the
one connection the event loop uses.) A database made before that setting is converted once, by
one `VACUUM`, when it is opened. PostgreSQL's autovacuum makes deleted rows' space reusable by
itself.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# PRAGMA auto_vacuum: 2 is incremental.
_INCREMENTAL = 2
# The WAL is cut back to this after a checkpoint: one large transaction (a map's inputs, an
# expiry's deletions) would otherwise leave it at its largest size for good.
WAL_SIZE_LIMIT = 32 << 20
# How often the checkpointer copies the WAL's committed pages into the database file.
CHECKPOINT_INTERVAL_S = 0.05


Parameters = Mapping[str, Any]
_REQUIRED = object()  # a bind the caller must give a value for


class Prepared:
    """A statement on every call's path. Its binds are named, and it is made per dialect by
    `make(dialect_name)` (the spelling of some statements differs). Run with `Connection.run`."""

    def __init__(self, make: Callable[[str], sa.Executable]) -> None:
        self._make = make
        self._statements: dict[str, sa.Executable] = {}
        self._compiled: dict[str, _Compiled] = {}

    @classmethod
    def of(cls, statement: sa.Executable) -> Prepared:
        """One statement for every dialect."""
        return cls(lambda _dialect_name: statement)

    def statement(self, dialect: sa.Dialect) -> sa.Executable:
        made = self._statements.get(dialect.name)
        if made is None:
            made = self._statements[dialect.name] = self._make(dialect.name)
        return made

    def compiled(self, dialect: sa.Dialect) -> _Compiled:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            compiled = self._compiled[dialect.name] = _Compiled.of(self.statement(dialect), dialect)
        return compiled


@dataclass(frozen=True)
class _Compiled:
    """A statement's SQL and what the driver's cursor needs to run it as SQLAlchemy would: its
    positional parameters in order (a bound literal's value where the caller names none, and an
    error where a parameter has neither), the bind types' conversions, and the returned columns'
    conversions."""

    sql: str
    binds: tuple[tuple[str, Any, Callable[[Any], Any] | None], ...]
    results: tuple[Callable[[Any], Any] | None, ...]
    returns_rows: bool

    @classmethod
    def of(cls, statement: sa.Executable, dialect: sa.Dialect) -> _Compiled:
        compiled = statement.compile(dialect=dialect)
        if compiled.positiontup is None:
            raise TypeError(f"a prepared statement needs positional parameters: {compiled}")
        binds = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            if bind.expanding:
                raise TypeError(f"a prepared statement cannot expand {name!r}: {compiled}")
            default = _REQUIRED if bind.required else bind.value
            binds.append((name, default, bind.type.bind_processor(dialect)))
        columns = list(getattr(statement, "exported_columns", ()))
        return cls(
            compiled.string,
            tuple(binds),
            tuple(column.type.result_processor(dialect, None) for column in columns),
            bool(columns),
        )

    def values(self, parameters: Parameters) -> tuple[Any, ...]:
        out = []
        for name, default, process in self.binds:
            value = parameters.get(name, default)
            if value is _REQUIRED:
                raise KeyError(f"no value for the parameter {name!r} of {self.sql}")
            out.append(value if process is None or value is None else process(value))
        return tuple(out)

    def row(self, raw: tuple[Any, ...]) -> tuple[Any, ...]:
        if not any(self.results):
            return raw
        return tuple(
            value if process is None else process(value)
            for value, process in zip(raw, self.results, strict=True)
        )


@dataclass(frozen=True)
class Ran:
    """What running a prepared statement gave: the rows it returned, in order, and how many rows
    it changed."""

    rows: list[tuple[Any, ...]]
    rowcount: int


class Connection(Protocol):
    @property
    def dialect(self) -> sa.Dialect: ...

    async def execute(self, statement: Any, parameters: Any = None) -> sa.CursorResult[Any]: ...

    async def run(self, prepared: Prepared, parameters: Parameters | Sequence[Parameters]) -> Ran:
        """Run a prepared statement once, or once per set of parameters (a sequence)."""
        ...


class Engine(Protocol):
    def begin(self) -> Any:
        """`async with engine.begin() as conn`: a transaction, committed on exit."""
        ...

    def connect(self) -> Any:
        """`async with engine.connect() as conn`: reads."""
        ...

    async def dispose(self) -> None: ...


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


class _InlineConnection:
    def __init__(self, connection: sa.Connection) -> None:
        self.connection = connection
        self.dialect = connection.dialect
        # The same connection as SQLAlchemy's: a statement run on it is in the transaction
        # SQLAlchemy began (the driver begins it before the first write) and commits.
        self._driver: sqlite3.Connection = connection.connection.driver_connection  # type: ignore[assignment]

    async def execute(self, statement: Any, parameters: Any = None) -> sa.CursorResult[Any]:
        return self.connection.execute(statement, parameters)

    async def run(self, prepared: Prepared, parameters: Parameters | Sequence[Parameters]) -> Ran:
        compiled = prepared.compiled(self.dialect)
        each = [parameters] if isinstance(parameters, Mapping) else parameters
        cursor = self._driver.cursor()
        try:
            if not compiled.returns_rows:
                if len(each) == 1:
                    cursor.execute(compiled.sql, compiled.values(each[0]))
                else:
                    cursor.executemany(compiled.sql, [compiled.values(p) for p in each])
                return Ran([], cursor.rowcount)
            # The driver returns no rows from executemany: one execution per set.
            rows, rowcount = [], 0
            for one in each:
                cursor.execute(compiled.sql, compiled.values(one))
                rows.extend(compiled.row(row) for row in cursor.fetchall())
                rowcount += cursor.rowcount
            return Ran(rows, rowcount)
        finally:
            cursor.close()


class _AsyncConnection:
    """SQLAlchemy's async connection (PostgreSQL), with `run`: prepared statements go through
    SQLAlchemy's execution there, as every other statement does."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection
        self.dialect = connection.dialect

    async def execute(self, statement: Any, parameters: Any = None) -> sa.CursorResult[Any]:
        return await self._connection.execute(statement, parameters)

    async def run(self, prepared: Prepared, parameters: Parameters | Sequence[Parameters]) -> Ran:
        many = not isinstance(parameters, Mapping)
        result = await self._connection.execute(
            prepared.statement(self.dialect), list(parameters) if many else parameters
        )
        rows = [tuple(row) for row in result] if result.returns_rows else []
        return Ran(rows, result.rowcount)


class _AsyncEngine:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[_AsyncConnection]:
        async with self._engine.begin() as connection:
            yield _AsyncConnection(connection)

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[_AsyncConnection]:
        async with self._engine.connect() as connection:
            yield _AsyncConnection(connection)

    async def dispose(self) -> None:
        await self._engine.dispose()


class _Checkpointer:
    """Runs `wal_checkpoint(PASSIVE)` every CHECKPOINT_INTERVAL_S on its own thread and
    connection. PASSIVE waits for nobody and blocks nobody: it copies what no reader still needs,
    and the rest the next time. (sqlite3 lets go of the GIL while it works.)"""

    def __init__(self, path: str) -> None:
        self._connection = sqlite3.connect(path, check_same_thread=False)
        self._connection.execute("PRAGMA synchronous=NORMAL")
        # Held through each checkpoint: SQLite refuses a second checkpoint while one runs, so a
        # TRUNCATE checkpoint (`InlineEngine.truncate_wal`) waits for this one to end.
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ember-checkpoints", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(CHECKPOINT_INTERVAL_S):
            try:
                with self.lock:
                    self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as error:  # e.g. a full disk: the WAL keeps the data meanwhile
                log.warning("checkpointing the database failed: %s", error)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._connection.close()


class InlineEngine:
    """A synchronous SQLite engine behind the async interface the store uses.

    It holds one connection: statements run inline and never interleave, and a checkout from a
    pool per transaction cost as much as the statements themselves. Checkpoints run beside it
    (`_Checkpointer`)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._connection = _InlineConnection(engine.connect())
        database = engine.url.database
        self._checkpointer = (
            _Checkpointer(database) if database and database != ":memory:" else None
        )

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[_InlineConnection]:
        with self._connection.connection.begin():
            yield self._connection

    def connect(self) -> Any:
        return self.begin()  # a read is a short transaction too: it releases its snapshot

    async def dispose(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._connection.connection.close()
        self._engine.dispose()

    def truncate_wal(self) -> None:
        """Copy the whole WAL into the database file and cut it to nothing."""
        with self._checkpointer.lock if self._checkpointer else contextlib.nullcontext():
            self.raw_connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def raw_connection(self) -> Any:
        """The sqlite3 connection itself, for pragmas that must run outside a transaction or be
        stepped to their end."""
        return self._connection.connection.connection.driver_connection


def _on_sqlite_connect(dbapi_connection: Any, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    # Takes effect only in a database with no tables yet; see `_convert_to_incremental`.
    cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


async def open_engine(url: str) -> Engine:
    """Open the database at `url` and run every migration it lacks."""
    if url.startswith("sqlite"):
        sync_engine = sa.create_engine(url, poolclass=sa.pool.SingletonThreadPool)
        sa.event.listen(sync_engine, "connect", _on_sqlite_connect)
        with sync_engine.connect() as connection:
            _convert_to_incremental(connection.connection.driver_connection)
        with sync_engine.begin() as connection:
            _upgrade_to_head(connection)
        return InlineEngine(sync_engine)
    async_engine = create_async_engine(url)
    async with async_engine.begin() as connection:
        await connection.run_sync(_upgrade_to_head)
    return _AsyncEngine(async_engine)


def _convert_to_incremental(raw: Any) -> None:
    """Turn on incremental auto-vacuum in a database made without it: SQLite changes the mode of
    a database that has tables only through a `VACUUM`, which rewrites the file (seconds for
    a hundred MB, once)."""
    if raw.execute("PRAGMA auto_vacuum").fetchone()[0] == _INCREMENTAL:
        return
    if raw.execute("PRAGMA page_count").fetchone()[0] == 0:
        return  # a new file: the connect hook's setting holds once the first table is made
    log.info("converting the database to incremental auto-vacuum (once)")
    try:
        # executescript: VACUUM cannot run inside the transaction sqlite3 may have opened.
        raw.executescript("PRAGMA auto_vacuum=INCREMENTAL; VACUUM;")
    except sqlite3.OperationalError as error:  # e.g. no room for the copy VACUUM makes
        log.warning("could not convert the database to incremental auto-vacuum: %s", error)


async def reclaim_space(engine: Engine, max_pages: int) -> int:
    """Give up to `max_pages` free pages of an SQLite database back to the file system; returns
    how many pages the file shrank by. Nothing to do on PostgreSQL."""
    if not isinstance(engine, InlineEngine):
        return 0
    raw = engine.raw_connection()
    before = raw.execute("PRAGMA page_count").fetchone()[0]
    # executescript steps the pragma to its end: execute() steps a statement without result
    # columns once, and this pragma frees one page per step.
    raw.executescript(f"PRAGMA incremental_vacuum({int(max_pages)});")
    after = raw.execute("PRAGMA page_count").fetchone()[0]
    if after < before:
        # Copy the moved pages into the file and cut the WAL, so the space is really returned.
        engine.truncate_wal()
    return int(before - after)


async def free_pages(engine: Engine) -> int:
    """How many pages of an SQLite database are free (0 on PostgreSQL)."""
    if not isinstance(engine, InlineEngine):
        return 0
    return int(engine.raw_connection().execute("PRAGMA freelist_count").fetchone()[0])


def _upgrade_to_head(connection: sa.Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
