"""What the store keeps for expiry: the blob ids of outputs (also for outputs stored before the
column existed), chunked deletion of expired calls' rows, and a call revived by a late input."""

import sqlalchemy as sa

from ember.control.store import FinalResult, NewInput, Store, input_id, schema, sqlite_url
from ember.proto import api_pb2
from tests.unit.control.store.expired import expired_calls
from tests.unit.control.store.old_database import database_at

CALL = "fc-" + "cd" * 8
BLOB = "bl-" + "ab" * 32
MAP = api_pb2.CALL_KIND_MAP


def result(blob_id: str = "", data: bytes = b"42") -> bytes:
    payload = api_pb2.Payload(blob_id=blob_id) if blob_id else api_pb2.Payload(data=data)
    return api_pb2.Result(status=api_pb2.RESULT_STATUS_SUCCESS, data=payload).SerializeToString()


async def output_blob_ids(store: Store) -> dict[int, str | None]:
    o = schema.outputs.c
    async with store.engine.connect() as conn:
        return dict((await conn.execute(sa.select(o.idx, o.result_blob_id))).all())


async def finished_map(store: Store, function_id: str, inputs: int) -> None:
    new = [NewInput(i, b"args", None) for i in range(inputs)]
    queued = await store.calls.create_call(CALL, function_id, MAP, new, True, 1.0)
    await store.calls.lease([q.input_id for q in queued], "ta-1", 31.0)
    await store.calls.record_results([FinalResult(q.input_id, 0, result(), True) for q in queued])


async def test_an_output_remembers_the_blob_its_result_is_in(store, make_function) -> None:
    function_id = await make_function()
    new = [NewInput(0, b"a", None), NewInput(1, b"b", None), NewInput(2, b"c", None)]
    queued = await store.calls.create_call(CALL, function_id, MAP, new, True, 1.0)
    await store.calls.lease([q.input_id for q in queued], "ta-1", 31.0)
    await store.calls.record_results(
        [
            FinalResult(input_id(CALL, 0), 0, result(BLOB), True),
            FinalResult(input_id(CALL, 1), 0, result(), True),
            # Inline bytes that happen to hold the prefix are not a blob.
            FinalResult(input_id(CALL, 2), 0, result(data=b"xbl-y"), True),
        ]
    )
    assert await output_blob_ids(store) == {0: BLOB, 1: None, 2: None}


async def test_outputs_stored_before_the_column_get_their_blob_ids(tmp_path) -> None:
    url = sqlite_url(tmp_path / "old.db")
    with database_at(tmp_path / "old.db", "0003") as conn:
        conn.execute(
            sa.text(
                "INSERT INTO outputs (call_id, input_id, idx, gen_index, result)"
                " VALUES (:call, :input, :idx, 0, :result)"
            ),
            [
                {"call": CALL, "input": input_id(CALL, 0), "idx": 0, "result": result(BLOB)},
                {"call": CALL, "input": input_id(CALL, 1), "idx": 1, "result": result()},
            ],
        )
    store = await Store.open(url)
    try:
        assert await output_blob_ids(store) == {0: BLOB, 1: None}
        assert await store.expiry.referenced_blobs([BLOB], sources_since=0.0) == {BLOB}
    finally:
        await store.close()


async def test_expired_calls_are_deleted_a_chunk_at_a_time_outputs_first(
    store, make_function
) -> None:
    function_id = await make_function()
    await finished_map(store, function_id, 5)
    other = "fc-" + "ef" * 8
    await store.calls.create_call(other, function_id, MAP, [NewInput(0, b"a", None)], True, 1.0)
    await store.calls.cancel(other)  # one input, no output
    await store.expiry.mark_finished([(CALL, 10.0, 20.0), (other, 10.0, 20.0)], 0.0)
    assert await store.expiry.delete_expired(20.0, calls=10, chunk=4) == (0, 4)
    assert len(await store.calls.outputs_after(CALL, 0, 10)) == 1
    assert await store.expiry.delete_expired(20.0, calls=10, chunk=4) == (0, 4)  # 1 out, 3 in
    # The last 3 inputs (2 of the map, the other's), then both calls, left with no rows
    assert await store.expiry.delete_expired(20.0, calls=10, chunk=4) == (2, 5)
    assert await store.expiry.delete_expired(20.0, calls=10, chunk=4) == (0, 0)
    assert await expired_calls(store, 100.0) == []


async def test_a_call_not_yet_expired_is_not_deleted(store, make_function) -> None:
    function_id = await make_function()
    await finished_map(store, function_id, 2)
    await store.expiry.mark_finished([(CALL, 10.0, 20.0)], stranded_before=0.0)
    assert await store.expiry.delete_expired(19.0, calls=10, chunk=100) == (0, 0)
    assert len(await store.calls.outputs_after(CALL, 0, 10)) == 2


async def test_the_calls_that_expired_soonest_go_first(store, make_function) -> None:
    function_id = await make_function()
    later, sooner = "fc-" + "01" * 8, "fc-" + "02" * 8
    for call_id in (later, sooner):
        new = [NewInput(0, b"a", None)]
        await store.calls.create_call(call_id, function_id, MAP, new, True, 1.0)
        await store.calls.cancel(call_id)
    await store.expiry.mark_finished([(later, 10.0, 30.0), (sooner, 10.0, 20.0)], 0.0)
    assert await store.expiry.delete_expired(40.0, calls=1, chunk=100) == (1, 2)
    assert await expired_calls(store, 100.0) == [later]


async def test_a_late_input_clears_a_calls_expiry(store, make_function) -> None:
    function_id = await make_function()
    await store.calls.create_call(CALL, function_id, MAP, [NewInput(0, b"a", None)], False, 1.0)
    await store.calls.cancel(CALL)  # no work left: it may be marked
    assert await store.expiry.mark_finished([(CALL, 10.0, 20.0)], stranded_before=0.0) == 1
    await store.calls.put_inputs(CALL, function_id, [NewInput(1, b"b", None)], True, 30.0)
    assert await expired_calls(store, 100.0) == []
    [facts] = await store.expiry.unfinished(stranded_before=0.0, limit=10)
    assert (facts.call_id, facts.finished_at, facts.has_work) == (CALL, None, True)


async def test_a_call_with_work_is_not_marked_finished(store, make_function) -> None:
    function_id = await make_function()
    await store.calls.create_call(CALL, function_id, MAP, [NewInput(0, b"a", None)], True, 1.0)
    assert await store.expiry.mark_finished([(CALL, 10.0, 20.0)], stranded_before=0.0) == 0
    assert await expired_calls(store, 100.0) == []
