"""The SQLite file gives deleted rows' space back: incremental auto-vacuum, the conversion of an
older database, and a file that stays bounded across repeated large maps that expire."""

import os
import sqlite3
from pathlib import Path

import sqlalchemy as sa

from ember.control.blobs import LocalBlobStore
from ember.control.clock import FakeClock
from ember.control.expiry import DELIVERED_GRACE_S, Expiry, RetentionPolicy
from ember.control.store import FinalResult, NewInput, Store, sqlite_url
from ember.proto import api_pb2
from tests.unit.control.store.expired import expired_calls

# Sized so the test takes a few seconds: 4 rounds of one 10,000-input map (sent like the SDK's,
# in batches of 1000), with arguments and results of a few hundred bytes: ~10 MB of file a round.
ROUNDS = 4
INPUTS = 10_000
BATCH = 1000


def auto_vacuum(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA auto_vacuum").fetchone()[0]


def file_bytes(path: Path) -> int:
    """The database and its write-ahead log."""
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


async def test_a_new_database_uses_incremental_auto_vacuum(tmp_path) -> None:
    store = await Store.open(sqlite_url(tmp_path / "ember.db"))
    await store.close()
    assert auto_vacuum(tmp_path / "ember.db") == 2


async def test_a_database_made_without_auto_vacuum_is_converted_and_keeps_its_data(
    tmp_path,
) -> None:
    path = tmp_path / "old.db"
    engine = sa.create_engine(sqlite_url(path))  # no connect hook: auto_vacuum stays NONE
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"))
        conn.execute(sa.text("INSERT INTO notes (body) VALUES ('kept')"))
    engine.dispose()
    assert auto_vacuum(path) == 0

    store = await Store.open(sqlite_url(path))
    await store.close()
    assert auto_vacuum(path) == 2
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT body FROM notes").fetchall() == [("kept",)]


async def test_reclaiming_space_shrinks_the_file_after_a_delete(tmp_path) -> None:
    path = tmp_path / "ember.db"
    store = await Store.open(sqlite_url(path))
    try:
        async with store.engine.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE filler (id INTEGER PRIMARY KEY, body BLOB)"))
            await conn.execute(
                sa.text("INSERT INTO filler (body) VALUES (:body)"),
                [{"body": os.urandom(1000)} for _ in range(5000)],
            )
        full = file_bytes(path)
        async with store.engine.begin() as conn:
            await conn.execute(sa.text("DELETE FROM filler"))
        assert await store.free_pages() > 1000
        assert await store.reclaim_space(100_000) > 1000
        assert await store.free_pages() == 0
        assert file_bytes(path) < full / 4
    finally:
        await store.close()


async def one_large_map(store: Store, clock: FakeClock, round_number: int) -> str:
    """An ephemeral app that runs one map to the end and stops, as `ember run` does."""
    app_id = await store.apps.create("big", api_pb2.APP_STATE_EPHEMERAL, clock.now())
    definition = api_pb2.FunctionDefinition(name="work", module="big")
    function_id = (await store.apps.publish(app_id, "", [definition]))["work"]
    call_id = f"fc-{round_number:016x}"
    args = b"a" * 300
    result = api_pb2.Result(
        status=api_pb2.RESULT_STATUS_SUCCESS, data=api_pb2.Payload(data=b"r" * 200)
    ).SerializeToString()
    for start in range(0, INPUTS, BATCH):
        batch = [NewInput(i, args, None) for i in range(start, start + BATCH)]
        complete = start + BATCH >= INPUTS
        if start == 0:
            queued = await store.calls.create_call(
                call_id, function_id, api_pb2.CALL_KIND_MAP, batch, complete, clock.now()
            )
        else:
            queued = await store.calls.put_inputs(
                call_id, function_id, batch, complete, clock.now()
            )
        ids = [q.input_id for q in queued]
        await store.calls.lease(ids, "ta-1", clock.now() + 30)
        await store.calls.record_results([FinalResult(i, 0, result, True) for i in ids])
    clock.advance(60)
    await store.apps.stop([app_id], clock.now())
    return call_id


async def test_the_database_stays_bounded_across_repeated_large_maps_that_expire(
    tmp_path,
) -> None:
    """Asserts that the file (database plus WAL) is no larger after each later round than after
    the first, give or take a tenth, and that once a round's rows are gone the file is back
    below half of its size with them. (Without expiry each round would add its ~10 MB.)"""
    path = tmp_path / "ember.db"
    clock = FakeClock()
    store = await Store.open(sqlite_url(path))
    expiry = Expiry(store, LocalBlobStore(tmp_path / "blobs"), clock, RetentionPolicy(7 * 86400.0))
    peaks, after_expiry = [], []
    try:
        for round_number in range(ROUNDS):
            call_id = await one_large_map(store, clock, round_number)
            peaks.append(file_bytes(path))
            await expiry.run_once()  # finished, and its app stopped: it may go after the grace
            clock.advance(DELIVERED_GRACE_S + 1)
            report = await expiry.run_once()
            assert report.calls_deleted == 1
            assert await expired_calls(store, clock.now()) == []
            after_expiry.append(file_bytes(path))
            assert not await store.calls.outputs_after(call_id, 0, 1)
    finally:
        await store.close()
    print("file bytes with each map's rows:", peaks, "after their expiry:", after_expiry)
    assert max(peaks[1:]) <= peaks[0] * 1.1
    assert max(after_expiry) < peaks[0] / 2
