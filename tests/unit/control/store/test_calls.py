"""Calls, inputs and outputs in the store: idempotent puts, leases, results, requeues, cancels."""

import contextlib
import sqlite3

import pytest
import sqlalchemy as sa

from ember import errors
from ember.control.store import (
    AFTER_LAST_ITEM,
    FinalResult,
    NewInput,
    Store,
    first_lease,
    input_id,
    parse_input_id,
    schema,
)
from ember.proto import api_pb2

CALL = "fc-" + "ab" * 8
REMOTE = api_pb2.CALL_KIND_REMOTE
MAP = api_pb2.CALL_KIND_MAP


def new_inputs(*positions: int) -> list[NewInput]:
    return [NewInput(i, f"args-{i}".encode(), None) for i in positions]


def result(status: int = api_pb2.RESULT_STATUS_SUCCESS, data: bytes = b"42") -> bytes:
    return api_pb2.Result(status=status, data=api_pb2.Payload(data=data)).SerializeToString()


@pytest.fixture
async def function_id(make_function) -> str:
    return await make_function()


async def states(store: Store, call_id: str = CALL) -> dict[int, str]:
    async with store.engine.connect() as conn:
        i = schema.inputs.c
        rows = await conn.execute(
            schema.inputs.select().with_only_columns(i.idx, i.state).where(i.call_id == call_id)
        )
        return dict(rows.all())


async def test_create_call_leasing_first_stores_the_first_input_leased_the_rest_queued(
    store, function_id
) -> None:
    leased, queued = await store.calls.create_call_leasing_first(
        CALL, function_id, MAP, new_inputs(0, 1, 2), True, 10.0, lease_first_to=("ta-1", 40.0)
    )
    assert leased is not None
    assert (leased.input_id, leased.idx, leased.args) == (input_id(CALL, 0), 0, b"args-0")
    assert (leased.attempts, leased.container_id) == (1, "ta-1")
    # What the dispatcher hands a waiting container before the call is stored.
    assert leased == first_lease(CALL, function_id, new_inputs(0)[0], "ta-1")
    assert [q.input_id for q in queued] == [input_id(CALL, 1), input_id(CALL, 2)]
    assert await states(store) == {0: schema.LEASED, 1: schema.QUEUED, 2: schema.QUEUED}
    [stored] = await store.calls.leased(container_ids=["ta-1"])
    assert (stored.input_id, stored.attempts) == (leased.input_id, 1)
    assert [item.input_id for item in await store.calls.leased(expired_before=40.5)] == [
        leased.input_id
    ]


async def test_create_call_leasing_first_leases_nothing_for_a_call_seen_before(
    store, function_id
) -> None:
    await store.calls.create_call(CALL, function_id, MAP, new_inputs(0), False, 10.0)
    leased, queued = await store.calls.create_call_leasing_first(
        CALL, function_id, MAP, new_inputs(0, 1), True, 11.0, lease_first_to=("ta-1", 40.0)
    )
    assert leased is None
    assert [q.input_id for q in queued] == [input_id(CALL, 1)]
    assert await states(store) == {0: schema.QUEUED, 1: schema.QUEUED}


def test_input_id_names_its_call_and_position() -> None:
    value = input_id(CALL, 7)
    assert value == "in-" + "ab" * 8 + "-7"
    assert parse_input_id(value) == (CALL, 7)


async def test_create_call_stores_the_call_and_its_queued_inputs(store, function_id) -> None:
    queued = await store.calls.create_call(CALL, function_id, MAP, new_inputs(0, 1), False, 10.0)
    assert [q.input_id for q in queued] == [input_id(CALL, 0), input_id(CALL, 1)]
    assert all(q.function_id == function_id and q.available_at == 10.0 for q in queued)
    call = await store.calls.get_call(CALL)
    assert (call.function_id, call.kind, call.num_inputs) == (function_id, MAP, 2)
    assert call.inputs_complete is False and call.cancelled is False
    assert await states(store) == {0: schema.QUEUED, 1: schema.QUEUED}


async def test_create_call_repeated_stores_nothing_new(store, function_id) -> None:
    await store.calls.create_call(CALL, function_id, REMOTE, new_inputs(0), True, 10.0)
    again = await store.calls.create_call(CALL, function_id, REMOTE, new_inputs(0), True, 11.0)
    assert again == []
    assert (await store.calls.get_call(CALL)).num_inputs == 1
    assert [q.input_id for q in await store.calls.queued()] == [input_id(CALL, 0)]


async def test_create_call_repeated_with_more_inputs_stores_only_the_missing(
    store, function_id
) -> None:
    await store.calls.create_call(CALL, function_id, MAP, new_inputs(0), False, 10.0)
    again = await store.calls.create_call(CALL, function_id, MAP, new_inputs(0, 1), True, 11.0)
    assert [q.input_id for q in again] == [input_id(CALL, 1)]
    call = await store.calls.get_call(CALL)
    assert (call.num_inputs, call.inputs_complete) == (2, True)


MALFORMED_CALL_IDS = ["", "call-1", "fc-XYZ0000000000000", "fc-abc", "fc-" + "a" * 40]


@pytest.mark.parametrize("bad", MALFORMED_CALL_IDS)
async def test_create_call_rejects_a_malformed_call_id(store, function_id, bad: str) -> None:
    with pytest.raises(errors.InvalidError, match="fc-<hex>"):
        await store.calls.create_call(bad, function_id, REMOTE, new_inputs(0), True, 1.0)


async def test_is_stored_tells_a_call_sent_again_from_a_new_one(store, function_id) -> None:
    assert not await store.calls.is_stored(CALL)
    await store.calls.create_call(CALL, function_id, REMOTE, new_inputs(0), True, 10.0)
    assert await store.calls.is_stored(CALL)
    assert not await store.calls.is_stored("fc-" + "cd" * 8)


@pytest.mark.parametrize("bad", MALFORMED_CALL_IDS)
async def test_is_stored_rejects_a_malformed_call_id(store, bad: str) -> None:
    with pytest.raises(errors.InvalidError, match="fc-<hex>"):
        await store.calls.is_stored(bad)


async def test_get_call_unknown_is_not_found(store) -> None:
    with pytest.raises(errors.NotFoundError, match=CALL):
        await store.calls.get_call(CALL)


async def test_put_inputs_returns_only_new_ones_and_counts_them(store, function_id) -> None:
    await store.calls.create_call(CALL, function_id, MAP, new_inputs(0, 1), False, 1.0)
    added = await store.calls.put_inputs(CALL, function_id, new_inputs(1, 2, 3), False, 2.0)
    assert [q.input_id for q in added] == [input_id(CALL, 2), input_id(CALL, 3)]
    call = await store.calls.get_call(CALL)
    assert (call.num_inputs, call.inputs_complete) == (4, False)


async def test_put_inputs_with_complete_marks_the_call_complete(store, function_id) -> None:
    await store.calls.create_call(CALL, function_id, MAP, new_inputs(0), False, 1.0)
    assert await store.calls.put_inputs(CALL, function_id, [], True, 2.0) == []
    call = await store.calls.get_call(CALL)
    assert (call.num_inputs, call.inputs_complete) == (1, True)


async def test_lease_marks_inputs_leased_and_counts_an_attempt(store, function_id) -> None:
    await store.calls.create_call(CALL, function_id, MAP, new_inputs(0), True, 1.0)
    [leased] = await store.calls.lease([input_id(CALL, 0)], "ta-1", 31.0)
    assert (leased.input_id, leased.idx, leased.args, leased.attempts) == (
        input_id(CALL, 0),
        0,
        b"args-0",
        1,
    )
    assert await states(store) == {0: schema.LEASED}
    [held] = await store.calls.leased(container_ids=["ta-1"])
    assert (held.container_id, held.attempts) == ("ta-1", 1)


async def test_lease_keeps_the_requested_order(store, function_id) -> None:
    await store.calls.create_call(CALL, function_id, MAP, new_inputs(0, 1, 2), True, 1.0)
    wanted = [input_id(CALL, 2), input_id(CALL, 0), input_id(CALL, 1)]
    leased = await store.calls.lease(wanted, "ta-1", 31.0)
    assert [item.input_id for item in leased] == wanted


async def test_lease_skips_inputs_that_are_not_queued(store, function_id) -> None:
    await store.calls.create_call(CALL, function_id, MAP, new_inputs(0, 1), True, 1.0)
    await store.calls.lease([input_id(CALL, 0)], "ta-1", 31.0)
    leased = await store.calls.lease([input_id(CALL, 0), input_id(CALL, 1)], "ta-2", 31.0)
    assert [item.input_id for item in leased] == [input_id(CALL, 1)]
    [first] = await store.calls.leased(container_ids=["ta-1"])
    assert (first.input_id, first.attempts) == (input_id(CALL, 0), 1)


async def test_record_results_stores_the_output_and_finishes_the_input(store, function_id) -> None:
    await store.calls.create_call(CALL, function_id, REMOTE, new_inputs(0), True, 1.0)
    await store.calls.lease([input_id(CALL, 0)], "ta-1", 31.0)
    stored = await store.calls.record_results([FinalResult(input_id(CALL, 0), 0, result(), True)])
    [output] = await store.calls.outputs_after(CALL, 0, 10)
    assert stored == {CALL: [output]}
    assert (output.idx, output.gen_index, output.result) == (0, 0, result())
    assert await states(store) == {0: schema.DONE}
    assert await store.calls.leased() == []


async def test_record_results_twice_stores_one_output(store, function_id) -> None:
    await store.calls.create_call(CALL, function_id, REMOTE, new_inputs(0), True, 1.0)
    final = FinalResult(input_id(CALL, 0), 0, result(), True)
    await store.calls.record_results([final])
    assert await store.calls.record_results([final]) == {}  # nothing new to hand to waiters
    assert len(await store.calls.outputs_after(CALL, 0, 10)) == 1


async def test_generator_items_do_not_finish_the_input(store, function_id) -> None:
    await store.calls.create_call(CALL, function_id, REMOTE, new_inputs(0), True, 1.0)
    await store.calls.lease([input_id(CALL, 0)], "ta-1", 31.0)
    item = input_id(CALL, 0)
    await store.calls.record_results([FinalResult(item, 0, result(), False)])
    await store.calls.record_results([FinalResult(item, 1, result(), False)])
    assert await states(store) == {0: schema.LEASED}
    done = result(api_pb2.RESULT_STATUS_GENERATOR_DONE, b"")
    await store.calls.record_results([FinalResult(item, 2, done, True)])
    assert await states(store) == {0: schema.DONE}
    outputs = await store.calls.outputs_after(CALL, 0, 10)
    assert [o.gen_index for o in outputs] == [0, 1, 2]


async def test_outputs_after_reads_past_a_sequence_number_up_to_a_limit(store, function_id) -> None:
    await store.calls.create_call(CALL, function_id, MAP, new_inputs(0, 1, 2), True, 1.0)
    await store.calls.record_results(
        [FinalResult(input_id(CALL, i), 0, result(), True) for i in (0, 1, 2)]
    )
    first, second, third = await store.calls.outputs_after(CALL, 0, 10)
    assert first.seq < second.seq < third.seq
    assert [o.idx for o in await store.calls.outputs_after(CALL, first.seq, 1)] == [1]


async def test_requeue_returns_leased_inputs_to_the_queue_at_a_time(store, function_id) -> None:
    await store.calls.create_call(CALL, function_id, REMOTE, new_inputs(0), True, 1.0)
    await store.calls.lease([input_id(CALL, 0)], "ta-1", 31.0)
    await store.calls.requeue([input_id(CALL, 0)], 50.0, undo_attempt=False)
    [queued] = await store.calls.queued()
    assert (queued.input_id, queued.available_at) == (input_id(CALL, 0), 50.0)
    [again] = await store.calls.lease([input_id(CALL, 0)], "ta-2", 80.0)
    assert again.attempts == 2


async def test_requeue_with_undo_attempt_does_not_count_the_lease(store, function_id) -> None:
    await store.calls.create_call(CALL, function_id, REMOTE, new_inputs(0), True, 1.0)
    await store.calls.lease([input_id(CALL, 0)], "ta-1", 31.0)
    await store.calls.requeue([input_id(CALL, 0)], 2.0, undo_attempt=True)
    [again] = await store.calls.lease([input_id(CALL, 0)], "ta-2", 32.0)
    assert again.attempts == 1


async def test_requeue_leaves_finished_inputs_alone(store, function_id) -> None:
    await store.calls.create_call(CALL, function_id, REMOTE, new_inputs(0), True, 1.0)
    await store.calls.record_results([FinalResult(input_id(CALL, 0), 0, result(), True)])
    await store.calls.requeue([input_id(CALL, 0)], 2.0, undo_attempt=False)
    assert await store.calls.queued() == []
    assert await states(store) == {0: schema.DONE}


async def test_queued_lists_oldest_available_first(store, function_id) -> None:
    await store.calls.create_call(CALL, function_id, MAP, new_inputs(0, 1), True, 1.0)
    await store.calls.lease([input_id(CALL, 0)], "ta-1", 31.0)
    await store.calls.requeue([input_id(CALL, 0)], 9.0, undo_attempt=False)
    assert [q.input_id for q in await store.calls.queued()] == [
        input_id(CALL, 1),
        input_id(CALL, 0),
    ]


async def test_leased_expired_before_finds_only_lapsed_leases(store, function_id) -> None:
    await store.calls.create_call(CALL, function_id, MAP, new_inputs(0, 1), True, 1.0)
    await store.calls.lease([input_id(CALL, 0)], "ta-1", 30.0)
    await store.calls.lease([input_id(CALL, 1)], "ta-2", 60.0)
    expired = await store.calls.leased(expired_before=45.0)
    assert [(e.input_id, e.container_id) for e in expired] == [(input_id(CALL, 0), "ta-1")]
    assert await store.calls.leased(expired_before=30.0) == []


async def test_renew_leases_moves_the_expiry_of_a_containers_inputs(store, function_id) -> None:
    await store.calls.create_call(CALL, function_id, MAP, new_inputs(0, 1), True, 1.0)
    await store.calls.lease([input_id(CALL, 0)], "ta-1", 30.0)
    await store.calls.lease([input_id(CALL, 1)], "ta-2", 30.0)
    await store.calls.renew_leases(["ta-1"], 90.0)
    expired = await store.calls.leased(expired_before=60.0)
    assert [e.container_id for e in expired] == ["ta-2"]


async def test_cancel_returns_the_unfinished_inputs_and_marks_the_call(store, function_id) -> None:
    await store.calls.create_call(CALL, function_id, MAP, new_inputs(0, 1, 2), True, 1.0)
    await store.calls.lease([input_id(CALL, 1)], "ta-1", 30.0)
    await store.calls.record_results([FinalResult(input_id(CALL, 2), 0, result(), True)])
    cancelled = await store.calls.cancel(CALL)
    assert sorted((c.idx, c.container_id) for c in cancelled) == [(0, None), (1, "ta-1")]
    assert (await store.calls.get_call(CALL)).cancelled is True
    assert await states(store) == {0: schema.CANCELLED, 1: schema.CANCELLED, 2: schema.DONE}
    assert await store.calls.queued() == []


async def test_cancel_function_inputs_drops_only_queued_ones(store, function_id) -> None:
    await store.calls.create_call(CALL, function_id, MAP, new_inputs(0, 1), True, 1.0)
    await store.calls.lease([input_id(CALL, 1)], "ta-1", 30.0)
    dropped = await store.calls.cancel_function_inputs([function_id])
    assert dropped == [input_id(CALL, 0)]
    assert await states(store) == {0: schema.CANCELLED, 1: schema.LEASED}


async def test_a_final_result_after_the_last_item_takes_the_next_index(store, function_id) -> None:
    await store.calls.create_call(CALL, function_id, REMOTE, new_inputs(0), True, 1.0)
    item = input_id(CALL, 0)
    await store.calls.record_results([FinalResult(item, 0, result(), False)])
    stored = await store.calls.record_results([FinalResult(item, AFTER_LAST_ITEM, result(), True)])
    assert [o.gen_index for o in stored[CALL]] == [1]


async def test_statements_that_name_inputs_by_id_find_them_by_id(
    store, function_id, tmp_path
) -> None:
    """Leases and requeues look their inputs up by primary key, never through the state index:
    that holds every queued input, so each lease of a few inputs of a big map would read the
    whole queue (SQLite's planner, without statistics, takes it)."""
    await store.calls.create_call(CALL, function_id, MAP, new_inputs(*range(50)), True, 1.0)
    statements: list[tuple[str, tuple]] = []

    def note(_conn, _cursor, statement, parameters, _context, _executemany) -> None:
        if "inputs.id IN" in statement:
            statements.append((statement, parameters))

    sa.event.listen(sa.Engine, "before_cursor_execute", note)
    try:
        ids = [input_id(CALL, 0), input_id(CALL, 1)]
        await store.calls.lease(ids, "ta-1", 31.0)
        await store.calls.requeue(ids[:1], 50.0, undo_attempt=False)
        await store.calls.requeue_lost(ids[1:], 50.0, max_losses=5)
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", note)
    assert len(statements) >= 4  # the lease, the requeue, and requeue_lost's two
    with contextlib.closing(sqlite3.connect(tmp_path / "ember.db")) as db:
        for statement, parameters in statements:
            plan = " | ".join(
                row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
            )
            assert "ix_inputs_state" not in plan, (statement, plan)
            assert "(id=?)" in plan, (statement, plan)
