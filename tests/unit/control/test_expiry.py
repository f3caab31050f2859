"""The expiry loop's passes against a real store on SQLite and a real blob directory, with a fake
clock: which calls, blobs and log lines go, and which stay."""

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from ember import errors
from ember.control.blobs import LocalBlobStore
from ember.control.clock import FakeClock
from ember.control.expiry import DELIVERED_GRACE_S, Expiry, RetentionPolicy
from ember.control.store import FinalResult, LogLine, NewInput, Store, input_id, schema
from ember.proto import api_pb2

DAY = 24 * 3600.0
RETENTION_S = 7 * DAY
REMOTE, MAP, SPAWN = api_pb2.CALL_KIND_REMOTE, api_pb2.CALL_KIND_MAP, api_pb2.CALL_KIND_SPAWN


@pytest.fixture
def clock() -> FakeClock:
    # Blob ages are file times: the fake clock starts at the real time so the two agree.
    return FakeClock(start=time.time())


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture
def expiry(store: Store, blobs: LocalBlobStore, clock: FakeClock) -> Expiry:
    return Expiry(store, blobs, clock, RetentionPolicy(RETENTION_S))


async def make_app(store: Store, clock: FakeClock, source_blob_id: str = "") -> tuple[str, str]:
    """A live ephemeral app with one function: its app id and function id."""
    app_id = await store.apps.create("app", api_pb2.APP_STATE_EPHEMERAL, clock.now())
    definition = api_pb2.FunctionDefinition(name="square", module="app")
    ids = await store.apps.publish(app_id, source_blob_id, [definition])
    return app_id, ids["square"]


def call_id(n: int) -> str:
    return f"fc-{n:016x}"


def success(blob_id: str = "") -> bytes:
    data = api_pb2.Payload(blob_id=blob_id) if blob_id else api_pb2.Payload(data=b"49")
    return api_pb2.Result(status=api_pb2.RESULT_STATUS_SUCCESS, data=data).SerializeToString()


async def run_call(
    store: Store,
    clock: FakeClock,
    function_id: str,
    n: int,
    kind: int = SPAWN,
    inputs: int = 1,
    *,
    args_blob_id: str | None = None,
    result_blob_id: str = "",
    finish: bool = True,
) -> str:
    """Make a call with its inputs, lease them to a container and, if `finish`, record each
    one's result (as the dispatcher does); returns the call id."""
    cid = call_id(n)
    new = [NewInput(i, None if args_blob_id else b"args", args_blob_id) for i in range(inputs)]
    queued = await store.calls.create_call(cid, function_id, kind, new, True, clock.now())
    await store.calls.lease([q.input_id for q in queued], "ta-1", clock.now() + 30)
    if finish:
        await store.calls.record_results(
            [FinalResult(q.input_id, 0, success(result_blob_id), True) for q in queued]
        )
    return cid


async def rows_of(store: Store, cid: str) -> dict[str, int]:
    """How many rows of the call are in each table."""
    counts = {}
    async with store.engine.connect() as conn:
        for table in (schema.calls, schema.inputs, schema.outputs):
            column = table.c.id if table is schema.calls else table.c.call_id
            counts[table.name] = (
                await conn.execute(sa.select(sa.func.count()).where(column == cid))
            ).scalar_one()
    return counts


GONE = {"calls": 0, "inputs": 0, "outputs": 0}


async def put_blob(blobs: LocalBlobStore, data: bytes) -> str:
    async def chunks() -> AsyncIterator[bytes]:
        yield data

    return await blobs.put(chunks())


def age(blobs_dir: Path, blob_id: str, seconds: float, clock: FakeClock) -> None:
    """Make the blob's last upload `seconds` before the clock's now."""
    digest = blob_id.removeprefix("bl-")
    moment = clock.now() - seconds
    os.utime(blobs_dir / digest[:2] / digest, (moment, moment))


async def stored_blobs(blobs: LocalBlobStore) -> set[str]:
    return {blob.blob_id for blob in await blobs.list()}


# ---- calls


async def test_a_call_past_its_retention_is_deleted_with_its_inputs_and_outputs(
    store, clock, expiry
) -> None:
    _, function_id = await make_app(store, clock)
    cid = await run_call(store, clock, function_id, 1, SPAWN, inputs=3)
    assert (await expiry.run_once()).finished == 1
    clock.advance(RETENTION_S + 1)
    report = await expiry.run_once()
    assert (report.calls_deleted, report.rows_deleted) == (1, 7)  # the call, 3 inputs, 3 outputs
    assert await rows_of(store, cid) == GONE
    with pytest.raises(errors.NotFoundError, match="EMBER_OUTPUT_RETENTION_S"):
        await store.calls.get_call(cid)


async def test_expired_calls_go_many_to_a_transaction(store, clock, expiry) -> None:
    """A pass deletes expired calls in pieces of many calls: one at a time, a pass over tens
    of thousands of `.remote()` calls kept the control plane's loop busy for most of a minute."""
    _, function_id = await make_app(store, clock)
    for n in range(300):
        await run_call(store, clock, function_id, n, SPAWN)
    await expiry.run_once()
    clock.advance(RETENTION_S + 1)
    begun: list[str] = []
    raw = store.engine.raw_connection()
    raw.set_trace_callback(lambda sql: begun.append(sql) if sql.startswith("BEGIN") else None)
    try:
        report = await expiry.run_once()
    finally:
        raw.set_trace_callback(None)
    assert (report.calls_deleted, report.rows_deleted) == (300, 900)
    # 900 rows in pieces of 100 rows of at most 50 calls, and the look for more: not 600
    assert len(begun) <= 20


async def test_many_calls_finish_and_go_in_one_pass(store, clock, expiry) -> None:
    """Several calls in one pass: the statements run once per call (an executemany), which an
    expanding IN parameter in them once broke, failing every pass of the control plane's loop."""
    _, function_id = await make_app(store, clock)
    calls = [await run_call(store, clock, function_id, n, SPAWN, inputs=2) for n in range(5)]
    assert (await expiry.run_once()).finished == 5
    clock.advance(RETENTION_S + 1)
    assert (await expiry.run_once()).calls_deleted == 5
    for cid in calls:
        assert await rows_of(store, cid) == GONE


async def test_a_call_within_its_retention_is_kept_and_readable(store, clock, expiry) -> None:
    _, function_id = await make_app(store, clock)
    cid = await run_call(store, clock, function_id, 1, SPAWN)
    await expiry.run_once()
    clock.advance(RETENTION_S - 60)
    assert (await expiry.run_once()).calls_deleted == 0
    assert await rows_of(store, cid) == {"calls": 1, "inputs": 1, "outputs": 1}
    [output] = await store.calls.outputs_after(cid, 0, 10)
    assert output.result == success()


async def test_retention_counts_from_when_the_call_finished_not_when_it_was_made(
    store, clock, expiry
) -> None:
    _, function_id = await make_app(store, clock)
    cid = await run_call(store, clock, function_id, 1, SPAWN, finish=False)
    clock.advance(RETENTION_S)  # ran for a whole retention
    await store.calls.record_results([FinalResult(input_id(cid, 0), 0, success(), True)])
    await expiry.run_once()
    clock.advance(RETENTION_S - 60)
    await expiry.run_once()
    assert (await rows_of(store, cid))["outputs"] == 1


async def test_a_call_with_an_input_still_running_is_never_deleted(store, clock, expiry) -> None:
    _, function_id = await make_app(store, clock)
    cid = await run_call(store, clock, function_id, 1, MAP, inputs=2, finish=False)
    await store.calls.record_results([FinalResult(input_id(cid, 0), 0, success(), True)])
    for _ in range(3):
        clock.advance(RETENTION_S)
        assert (await expiry.run_once()).finished == 0
    assert await rows_of(store, cid) == {"calls": 1, "inputs": 2, "outputs": 1}


async def test_a_delivered_map_goes_a_grace_after_its_app_stopped(store, clock, expiry) -> None:
    app_id, function_id = await make_app(store, clock)
    cid = await run_call(store, clock, function_id, 1, MAP, inputs=100)
    await expiry.run_once()
    clock.advance(3600)
    await store.apps.stop([app_id], clock.now())  # `ember run` ended: its reader is done
    assert (await expiry.run_once()).brought_forward == 1
    clock.advance(DELIVERED_GRACE_S - 1)
    await expiry.run_once()
    assert (await rows_of(store, cid))["outputs"] == 100  # a repeated read still finds them
    clock.advance(2)
    assert (await expiry.run_once()).calls_deleted == 1
    assert await rows_of(store, cid) == GONE


async def test_a_remote_call_finishing_after_its_app_stopped_goes_a_grace_later(
    store, clock, expiry
) -> None:
    app_id, function_id = await make_app(store, clock)
    cid = await run_call(store, clock, function_id, 1, REMOTE, finish=False)
    await store.apps.stop([app_id], clock.now())
    await expiry.run_once()  # its input still leased: not finished
    await store.calls.record_results([FinalResult(input_id(cid, 0), 0, success(), True)])
    clock.advance(60)
    await expiry.run_once()
    clock.advance(DELIVERED_GRACE_S + 1)
    assert (await expiry.run_once()).calls_deleted == 1


async def test_a_map_its_reader_cancelled_goes_early(store, clock, expiry) -> None:
    _, function_id = await make_app(store, clock)
    cid = await run_call(store, clock, function_id, 1, MAP, inputs=3, finish=False)
    await store.calls.cancel(cid)  # FunctionCallCancel: the caller stopped reading
    await expiry.run_once()
    clock.advance(DELIVERED_GRACE_S + 1)
    assert (await expiry.run_once()).calls_deleted == 1
    assert await rows_of(store, cid) == GONE


async def test_a_spawned_call_stays_its_whole_retention_after_its_app_stopped(
    store, clock, expiry
) -> None:
    app_id, function_id = await make_app(store, clock)
    cid = await run_call(store, clock, function_id, 1, SPAWN)
    await expiry.run_once()
    await store.apps.stop([app_id], clock.now())
    assert (await expiry.run_once()).brought_forward == 0
    clock.advance(RETENTION_S - 60)
    await expiry.run_once()
    [output] = await store.calls.outputs_after(cid, 0, 1)  # what FunctionCall.get() reads
    assert output.result == success()
    clock.advance(120)
    assert (await expiry.run_once()).calls_deleted == 1


async def test_a_map_that_gets_more_inputs_after_looking_finished_runs_again(
    store, clock, expiry
) -> None:
    _, function_id = await make_app(store, clock)
    cid = call_id(1)
    queued = await store.calls.create_call(
        cid, function_id, MAP, [NewInput(0, b"a", None)], False, clock.now()
    )
    await store.calls.lease([queued[0].input_id], "ta-1", clock.now() + 30)
    await store.calls.record_results([FinalResult(queued[0].input_id, 0, success(), True)])
    clock.advance(RETENTION_S)  # its feeder silent for a retention: taken to be gone
    assert (await expiry.run_once()).finished == 1
    await store.calls.put_inputs(cid, function_id, [NewInput(1, b"b", None)], True, clock.now())
    clock.advance(RETENTION_S + 1)  # past the expiry the first pass gave it
    report = await expiry.run_once()
    assert (report.calls_deleted, report.finished) == (0, 0)  # input 1 is queued: it runs
    assert await rows_of(store, cid) == {"calls": 1, "inputs": 2, "outputs": 1}


async def test_queued_inputs_stranded_in_an_app_stopped_a_retention_ago_do_not_keep_a_call(
    store, clock, expiry
) -> None:
    app_id, function_id = await make_app(store, clock)
    cid = call_id(1)
    await store.calls.create_call(
        cid, function_id, SPAWN, [NewInput(0, b"a", None)], True, clock.now()
    )
    # Stopped, but its inputs were never cancelled (a crash between the two).
    await store.apps.stop([app_id], clock.now())
    clock.advance(RETENTION_S - 60)
    assert (await expiry.run_once()).finished == 0
    clock.advance(120)
    assert (await expiry.run_once()).finished == 1
    clock.advance(RETENTION_S + 1)
    assert (await expiry.run_once()).calls_deleted == 1


# ---- blobs


async def test_an_old_blob_no_row_names_is_deleted(store, clock, blobs, expiry, tmp_path) -> None:
    blob_id = await put_blob(blobs, b"x" * 1000)
    age(tmp_path / "blobs", blob_id, DAY + 1, clock)
    report = await expiry.run_once()
    assert (report.blobs_deleted, report.blob_bytes_freed) == (1, 1000)
    assert await stored_blobs(blobs) == set()


async def test_a_fresh_blob_no_row_names_yet_is_kept(store, clock, blobs, expiry, tmp_path) -> None:
    # BlobPut comes before the FunctionCall that names it: the grace covers the gap.
    blob_id = await put_blob(blobs, b"x" * 1000)
    age(tmp_path / "blobs", blob_id, DAY - 60, clock)
    assert (await expiry.run_once()).blobs_deleted == 0
    assert await stored_blobs(blobs) == {blob_id}


async def test_old_blobs_named_by_a_live_input_an_output_or_a_live_app_are_kept(
    store, clock, blobs, expiry, tmp_path
) -> None:
    source, args, result = [await put_blob(blobs, bytes([n]) * 100) for n in range(3)]
    _, function_id = await make_app(store, clock, source_blob_id=source)
    await run_call(store, clock, function_id, 1, SPAWN, args_blob_id=args, finish=False)
    await run_call(store, clock, function_id, 2, SPAWN, result_blob_id=result)
    for blob_id in (source, args, result):
        age(tmp_path / "blobs", blob_id, 30 * DAY, clock)
    assert (await expiry.run_once()).blobs_deleted == 0
    assert await stored_blobs(blobs) == {source, args, result}


async def test_the_arguments_of_a_finished_input_are_not_kept_for_it(
    store, clock, blobs, expiry, tmp_path
) -> None:
    args = await put_blob(blobs, b"a" * 100)
    _, function_id = await make_app(store, clock)
    cid = await run_call(store, clock, function_id, 1, SPAWN, args_blob_id=args)
    age(tmp_path / "blobs", args, DAY + 1, clock)
    assert (await expiry.run_once()).blobs_deleted == 1
    assert (await rows_of(store, cid))["outputs"] == 1  # the call's result itself stays


async def test_a_result_blob_goes_once_its_call_has_expired(
    store, clock, blobs, expiry, tmp_path
) -> None:
    result = await put_blob(blobs, b"r" * 100)
    _, function_id = await make_app(store, clock)
    await run_call(store, clock, function_id, 1, SPAWN, result_blob_id=result)
    await expiry.run_once()
    clock.advance(RETENTION_S + 1)  # its file is older than the grace by then
    report = await expiry.run_once()
    assert (report.calls_deleted, report.blobs_deleted) == (1, 1)
    assert await stored_blobs(blobs) == set()


async def test_the_source_of_an_app_stopped_longer_than_the_retention_goes(
    store, clock, blobs, expiry, tmp_path
) -> None:
    source = await put_blob(blobs, b"s" * 100)
    app_id, _ = await make_app(store, clock, source_blob_id=source)
    await store.apps.stop([app_id], clock.now())
    clock.advance(RETENTION_S - 60)
    age(tmp_path / "blobs", source, RETENTION_S, clock)
    assert (await expiry.run_once()).blobs_deleted == 0
    clock.advance(120)
    age(tmp_path / "blobs", source, RETENTION_S, clock)
    assert (await expiry.run_once()).blobs_deleted == 1


async def test_a_blob_uploaded_again_after_it_was_listed_is_kept(
    store, clock, blobs, tmp_path
) -> None:
    blob_id = await put_blob(blobs, b"x" * 100)
    age(tmp_path / "blobs", blob_id, 2 * DAY, clock)
    [listed] = await blobs.list()
    assert listed.uploaded_at < clock.now() - DAY
    await put_blob(blobs, b"x" * 100)  # the same bytes, for a call about to be made
    assert blobs.delete(blob_id, uploaded_before=clock.now() - DAY) == 0
    assert await stored_blobs(blobs) == {blob_id}


async def test_uploads_cut_off_by_a_crash_are_removed_once_old(
    store, clock, blobs, expiry, tmp_path
) -> None:
    stale, fresh = tmp_path / "blobs" / ".incoming-stale", tmp_path / "blobs" / ".incoming-fresh"
    stale.write_bytes(b"x" * 10)
    fresh.write_bytes(b"y" * 10)
    moment = clock.now() - DAY - 1
    os.utime(stale, (moment, moment))
    await expiry.run_once()
    assert (stale.exists(), fresh.exists()) == (False, True)


# ---- logs


async def test_log_lines_older_than_the_retention_go(store, clock, expiry) -> None:
    def line(at: float) -> LogLine:
        return LogLine(0, "ap-1", "square", "ta-1", 1, f"at {at}\n", at)

    start = clock.now()
    await store.logs.append([line(start), line(start + 10)])
    clock.advance(RETENTION_S + 5)
    assert (await expiry.run_once()).log_lines_deleted == 1
    assert [kept.timestamp for kept in await store.logs.after("ap-1", 0)] == [start + 10]
