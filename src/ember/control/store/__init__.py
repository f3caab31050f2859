"""The control plane's store: every piece of state, in SQL, through one layer.

`Store.open(url)` connects (SQLite by default, PostgreSQL by URL), migrates the schema to the
newest version, and exposes one object per concern: `apps`, `calls`, `cluster`, `logs`, `images`,
and `expiry` (what the expiry loop reads and deletes).
"""

from __future__ import annotations

from dataclasses import dataclass

from ember.control.store.apps import App, AppStore, Function
from ember.control.store.calls import (
    AFTER_LAST_ITEM,
    Call,
    CallStore,
    FinalResult,
    LeasedInput,
    NewInput,
    QueuedInput,
    StoredOutput,
    first_lease,
    input_id,
    parse_input_id,
)
from ember.control.store.cluster import ClusterStore, Container, Worker
from ember.control.store.engine import (
    Engine,
    free_pages,
    open_engine,
    reclaim_space,
    sqlite_url,
)
from ember.control.store.expiry import CallFacts, ExpiryStore
from ember.control.store.images import ImageRecord, ImageStore
from ember.control.store.logs import LogLine, LogStore


@dataclass
class Store:
    engine: Engine
    apps: AppStore
    calls: CallStore
    cluster: ClusterStore
    logs: LogStore
    images: ImageStore
    expiry: ExpiryStore

    @classmethod
    async def open(cls, url: str) -> Store:
        engine = await open_engine(url)
        return cls(
            engine,
            AppStore(engine),
            CallStore(engine),
            ClusterStore(engine),
            LogStore(engine),
            ImageStore(engine),
            ExpiryStore(engine),
        )

    async def free_pages(self) -> int:
        """Pages of the database file that hold nothing (SQLite; 0 elsewhere)."""
        return await free_pages(self.engine)

    async def reclaim_space(self, max_pages: int) -> int:
        """Give up to `max_pages` free pages back to the file system; returns how many went."""
        return await reclaim_space(self.engine, max_pages)

    async def close(self) -> None:
        await self.engine.dispose()


__all__ = [
    "AFTER_LAST_ITEM",
    "App",
    "Call",
    "CallFacts",
    "Container",
    "FinalResult",
    "Function",
    "ImageRecord",
    "LeasedInput",
    "LogLine",
    "NewInput",
    "QueuedInput",
    "Store",
    "StoredOutput",
    "Worker",
    "first_lease",
    "input_id",
    "parse_input_id",
    "sqlite_url",
]
