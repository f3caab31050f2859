"""The control plane's store: every piece of state, in SQL, through one layer.

`Store.open(url)` connects (SQLite by default, PostgreSQL by URL), migrates the schema to the
newest version, and exposes one object per concern: `apps`, `calls`, `cluster`, `logs`, `images`.
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
    input_id,
    parse_input_id,
)
from ember.control.store.cluster import ClusterStore, Container, Worker
from ember.control.store.engine import Engine, open_engine, sqlite_url
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
        )

    async def close(self) -> None:
        await self.engine.dispose()


__all__ = [
    "AFTER_LAST_ITEM",
    "App",
    "Call",
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
    "input_id",
    "parse_input_id",
    "sqlite_url",
]
