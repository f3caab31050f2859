"""Checkpoints run beside the event loop's connection: committed pages reach the database file
without a commit of the loop's running one, and closing the store stops the checkpointer."""

import asyncio
import threading
from pathlib import Path

from ember.control.store import NewInput, Store, sqlite_url
from ember.proto import api_pb2

# Each its own commit: well under the 1,000 WAL pages at which a commit would checkpoint itself.
CALLS = 300


def checkpointers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "ember-checkpoints"]


async def test_committed_pages_reach_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "ember.db"
    store = await Store.open(sqlite_url(path))
    try:
        function_id = await make_function_in(store)
        before = path.stat().st_size
        for number in range(CALLS):
            await store.calls.create_call(
                f"fc-{number:016x}",
                function_id,
                api_pb2.CALL_KIND_REMOTE,
                [NewInput(0, b"x" * 2000, None)],
                True,
                1.0,
            )
        # Under SQLite's own threshold the loop's commits never checkpoint: the file grows only
        # by the checkpointer's work.
        async with asyncio.timeout(10):
            while path.stat().st_size < before + CALLS * 2000:
                await asyncio.sleep(0.05)
    finally:
        await store.close()


async def test_closing_the_store_stops_its_checkpointer(tmp_path: Path) -> None:
    already = set(checkpointers())
    store = await Store.open(sqlite_url(tmp_path / "ember.db"))
    assert len(set(checkpointers()) - already) == 1
    await store.close()
    assert set(checkpointers()) - already == set()


async def make_function_in(store: Store) -> str:
    definition = api_pb2.FunctionDefinition(name="square", module="app")
    app_id = await store.apps.create("app", api_pb2.APP_STATE_EPHEMERAL, 1.0)
    return (await store.apps.publish(app_id, "", [definition]))["square"]
