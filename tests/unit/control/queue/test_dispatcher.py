"""The dispatcher over a real store and a fake clock: leases, results, retries, exits, restarts."""

import asyncio
import gc
import pickle

import pytest

from ember import errors
from ember.control.queue import dispatcher as dispatcher_module
from ember.control.queue.dispatcher import LEASE_S, MAX_HOST_LOSSES, Dispatcher
from ember.control.store import NewInput, Store, schema
from ember.proto import api_pb2

CALL = "fc-" + "0123456789abcdef"
SUCCESS = api_pb2.RESULT_STATUS_SUCCESS
FAILURE = api_pb2.RESULT_STATUS_FAILURE
RETRIES = api_pb2.RetryPolicy(
    max_retries=2, backoff_coefficient=2.0, initial_delay_s=1.0, max_delay_s=60.0
)


def definition(**fields) -> api_pb2.FunctionDefinition:
    return api_pb2.FunctionDefinition(name="square", module="app", **fields)


@pytest.fixture
def definitions() -> dict[str, api_pb2.FunctionDefinition]:
    return {}


@pytest.fixture
def container_counts() -> dict[str, int]:
    return {}


@pytest.fixture
def dispatcher(store, clock, definitions, container_counts) -> Dispatcher:
    return Dispatcher(
        store, clock, definitions.__getitem__, lambda fid: container_counts.get(fid, 1)
    )


@pytest.fixture
def add_function(make_function, definitions):
    async def add(**fields) -> str:
        d = definition(**fields)
        function_id = await make_function(d)
        definitions[function_id] = d
        return function_id

    return add


@pytest.fixture
async def function_id(add_function) -> str:
    return await add_function(retries=RETRIES)


async def submit(
    store: Store, dispatcher: Dispatcher | None, function_id: str, count: int, call: str = CALL
) -> list[str]:
    """A call with `count` inputs, stored and (with a dispatcher) enqueued; their ids."""
    queued = await store.calls.create_call(
        call,
        function_id,
        api_pb2.CALL_KIND_MAP,
        [NewInput(i, pickle.dumps(((i,), {})), None) for i in range(count)],
        True,
        0.0,
    )
    if dispatcher is not None:
        dispatcher.enqueue(queued)
    return [q.input_id for q in queued]


def input_result(item: str, status: int = SUCCESS, value: object = 1, gen_index: int = 0):
    return api_pb2.InputResult(
        input_id=item,
        gen_index=gen_index,
        result=api_pb2.Result(
            status=status,
            data=api_pb2.Payload(data=pickle.dumps(value)),
            exception_text="" if status == SUCCESS else "ValueError: bad",
        ),
    )


async def statuses(store: Store, call: str = CALL) -> list[tuple[int, int]]:
    """(idx, status) of each output of the call, in order."""
    return [
        (o.idx, api_pb2.Result.FromString(o.result).status)
        for o in await store.calls.outputs_after(call, 0, 100)
    ]


async def input_states(store: Store) -> dict[str, str]:
    i = schema.inputs.c
    async with store.engine.connect() as conn:
        rows = await conn.execute(schema.inputs.select().with_only_columns(i.id, i.state))
        return dict(rows.all())


# ---- taking inputs


async def test_take_leases_inputs_in_queue_order(store, dispatcher, function_id) -> None:
    ids = await submit(store, dispatcher, function_id, 3)
    leased = await dispatcher.take(function_id, "ta-1", want=3, wait_s=0)
    assert [item.input_id for item in leased] == ids
    assert [item.attempts for item in leased] == [1, 1, 1]
    assert dispatcher.holds("ta-1") == set(ids)
    assert (dispatcher.queued(function_id), dispatcher.running(function_id)) == (0, 3)


async def test_take_shares_a_backlog_between_containers(
    store, dispatcher, function_id, container_counts
) -> None:
    container_counts[function_id] = 2
    ids = await submit(store, dispatcher, function_id, 4)
    first = await dispatcher.take(function_id, "ta-1", want=10, wait_s=0)
    second = await dispatcher.take(function_id, "ta-2", want=10, wait_s=0)
    assert [i.input_id for i in first] == ids[:2]
    assert [i.input_id for i in second] == ids[2:3]  # half of what was left
    assert dispatcher.queued(function_id) == 1


async def test_take_with_nothing_queued_and_no_wait_returns_nothing(dispatcher, function_id):
    assert await dispatcher.take(function_id, "ta-1", want=1, wait_s=0) == []


async def test_take_waits_until_an_input_is_enqueued(store, dispatcher, function_id) -> None:
    ids = await submit(store, None, function_id, 1)
    waiting = asyncio.create_task(dispatcher.take(function_id, "ta-1", want=1, wait_s=30))
    await asyncio.sleep(0)
    assert not waiting.done()
    dispatcher.enqueue(await store.calls.queued())
    leased = await asyncio.wait_for(waiting, 5)
    assert [item.input_id for item in leased] == ids


async def test_requests_that_stopped_waiting_are_not_kept(dispatcher, function_id) -> None:
    """An idle container asks again and again; the requests that timed out are not kept (the
    last one's may live on a little, in its own exception's traceback)."""

    async def waiters_left_after(requests: int) -> int:
        for _ in range(requests):
            assert await dispatcher.take(function_id, "ta-idle", want=1, wait_s=0.001) == []
        gc.collect()
        live = [o for o in gc.get_objects() if isinstance(o, dispatcher_module._InputWaiter)]
        return sum(waiter.container_id == "ta-idle" for waiter in live)

    assert await waiters_left_after(20) <= 1
    assert await waiters_left_after(20) <= 1


async def until_waiting(task: asyncio.Task) -> None:
    """Let `task` run up to its wait (a few loop turns), failing if it finished instead."""
    for _ in range(10):
        await asyncio.sleep(0)
    assert not task.done(), "the request should be waiting"


def one_input(idx: int = 0) -> list[NewInput]:
    return [NewInput(idx, pickle.dumps(((idx,), {})), None)]


class CountingTransactions:
    """Counts the store's transactions (`engine.begin()`), delegating each."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.count = 0

    def begin(self):
        self.count += 1
        return self._engine.begin()

    def __getattr__(self, name: str):
        return getattr(self._engine, name)


async def test_a_call_made_while_a_container_waits_is_leased_to_it_in_one_transaction(
    store, dispatcher, function_id, monkeypatch
) -> None:
    waiting = asyncio.create_task(dispatcher.take(function_id, "ta-1", want=1, wait_s=30))
    await until_waiting(waiting)
    counting = CountingTransactions(store.calls._engine)
    monkeypatch.setattr(store.calls, "_engine", counting)
    new = await dispatcher.create_call(
        CALL, function_id, api_pb2.CALL_KIND_REMOTE, one_input(7), True
    )
    [leased] = await asyncio.wait_for(waiting, 5)
    assert counting.count == 1  # stored and leased together: no lease transaction after it
    assert new == 1
    assert (leased.idx, leased.attempts, pickle.loads(leased.args or b"")) == (7, 1, ((7,), {}))
    [stored] = await store.calls.leased(container_ids=["ta-1"])
    assert (stored.input_id, stored.attempts) == (leased.input_id, 1)
    assert dispatcher.holds("ta-1") == {leased.input_id}
    assert (dispatcher.queued(function_id), dispatcher.running(function_id)) == (0, 1)


async def test_a_call_does_not_pass_inputs_queued_before_it(store, dispatcher, function_id) -> None:
    first = asyncio.create_task(dispatcher.take(function_id, "ta-1", want=1, wait_s=30))
    second = asyncio.create_task(dispatcher.take(function_id, "ta-2", want=1, wait_s=30))
    await until_waiting(first)
    await until_waiting(second)
    [older] = await submit(store, dispatcher, function_id, 1, call="fc-" + "1" * 16)
    # ta-1 is woken for the older input but has not run yet: the new call must queue behind it.
    await dispatcher.create_call(CALL, function_id, api_pb2.CALL_KIND_REMOTE, one_input(), True)
    [got_first] = await asyncio.wait_for(first, 5)
    [got_second] = await asyncio.wait_for(second, 5)
    assert got_first.input_id == older
    assert got_second.input_id != older


async def test_a_container_that_stopped_waiting_is_not_handed_a_call(
    store, dispatcher, function_id
) -> None:
    gone = asyncio.create_task(dispatcher.take(function_id, "ta-1", want=1, wait_s=30))
    await until_waiting(gone)
    gone.cancel()  # its worker's request went away
    await asyncio.gather(gone, return_exceptions=True)
    await dispatcher.create_call(CALL, function_id, api_pb2.CALL_KIND_REMOTE, one_input(), True)
    assert dispatcher.holds("ta-1") == set()
    assert dispatcher.queued(function_id) == 1


async def test_an_input_handed_to_a_request_that_went_meanwhile_is_sent_on_the_next(
    store, dispatcher, function_id, monkeypatch
) -> None:
    """The request went while the call's transaction ran (its answer was lost with it): the
    input stays leased to the container, whose next request is sent it."""
    waiting = asyncio.create_task(dispatcher.take(function_id, "ta-1", want=1, wait_s=30))
    await until_waiting(waiting)
    store_it = store.calls.create_call_leasing_first

    async def request_goes_first(*args, **kwargs):
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        return await store_it(*args, **kwargs)

    monkeypatch.setattr(store.calls, "create_call_leasing_first", request_goes_first)
    await dispatcher.create_call(CALL, function_id, api_pb2.CALL_KIND_REMOTE, one_input(), True)
    [again] = await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    assert dispatcher.holds("ta-1") == {again.input_id}
    assert again.attempts == 1


async def test_a_call_sent_again_leases_nothing_twice_and_the_container_keeps_waiting(
    store, dispatcher, function_id
) -> None:
    first = asyncio.create_task(dispatcher.take(function_id, "ta-1", want=1, wait_s=30))
    await until_waiting(first)
    await dispatcher.create_call(CALL, function_id, api_pb2.CALL_KIND_REMOTE, one_input(), True)
    [leased] = await asyncio.wait_for(first, 5)
    second = asyncio.create_task(dispatcher.take(function_id, "ta-2", want=1, wait_s=30))
    await until_waiting(second)
    # The client sends the call again (it lost the answer): nothing new, nothing leased.
    new = await dispatcher.create_call(
        CALL, function_id, api_pb2.CALL_KIND_REMOTE, one_input(), True
    )
    assert new == 0
    await until_waiting(second)  # handed nothing, it went back to waiting
    assert [item.input_id for item in await store.calls.leased()] == [leased.input_id]
    second.cancel()


class HeldStore:
    """Holds `create_call_leasing_first` until `release()` (or fails it with `fail`): what
    happens while a call is being stored."""

    def __init__(self, store: Store, monkeypatch) -> None:
        self._store_it = store.calls.create_call_leasing_first
        self._released = asyncio.Event()
        self.entered = asyncio.Event()
        self.fail: Exception | None = None
        monkeypatch.setattr(store.calls, "create_call_leasing_first", self._held)

    async def _held(self, *args, **kwargs):
        self.entered.set()
        await self._released.wait()
        if self.fail is not None:
            raise self.fail
        return await self._store_it(*args, **kwargs)

    def release(self) -> None:
        self._released.set()


async def hand_while_held(dispatcher: Dispatcher, function_id: str, held: HeldStore):
    """Container ta-1 waits, then CALL is made: returns the `create_call` task, its transaction
    begun and held, and the input ta-1 was handed meanwhile."""
    waiting = asyncio.create_task(dispatcher.take(function_id, "ta-1", want=1, wait_s=30))
    await until_waiting(waiting)
    creating = asyncio.create_task(
        dispatcher.create_call(CALL, function_id, api_pb2.CALL_KIND_REMOTE, one_input(), True)
    )
    await asyncio.wait_for(held.entered.wait(), 5)
    [leased] = await asyncio.wait_for(waiting, 5)
    return creating, leased


async def test_a_waiting_container_is_handed_a_call_before_it_is_stored(
    store, dispatcher, function_id, monkeypatch
) -> None:
    """The call's transaction runs while its input travels: the container has it first."""
    held = HeldStore(store, monkeypatch)
    creating, leased = await hand_while_held(dispatcher, function_id, held)
    assert not await store.calls.is_stored(CALL)
    held.release()
    assert await asyncio.wait_for(creating, 5) == 1
    [stored] = await store.calls.leased(container_ids=["ta-1"])
    assert (stored.input_id, stored.attempts) == (leased.input_id, 1)


async def test_a_result_reported_while_its_call_is_stored_is_applied_after(
    store, dispatcher, function_id, monkeypatch
) -> None:
    held = HeldStore(store, monkeypatch)
    creating, leased = await hand_while_held(dispatcher, function_id, held)
    reporting = asyncio.create_task(dispatcher.report("ta-1", [input_result(leased.input_id)]))
    await until_waiting(reporting)  # it waits for the call's transaction
    held.release()
    await asyncio.wait_for(asyncio.gather(creating, reporting), 5)
    assert await statuses(store) == [(0, SUCCESS)]
    assert await input_states(store) == {leased.input_id: schema.DONE}
    assert dispatcher.holds("ta-1") == set()


async def test_a_container_that_exits_while_its_call_is_stored_fails_it_after(
    store, dispatcher, add_function, monkeypatch
) -> None:
    function_id = await add_function()  # no retries: the failure is final
    held = HeldStore(store, monkeypatch)
    creating, leased = await hand_while_held(dispatcher, function_id, held)
    died = api_pb2.RESULT_STATUS_CONTAINER_DIED
    exiting = asyncio.create_task(
        dispatcher.container_exited("ta-1", died, "killed", [leased.input_id])
    )
    await until_waiting(exiting)
    held.release()
    await asyncio.wait_for(asyncio.gather(creating, exiting), 5)
    assert await statuses(store) == [(0, died)]
    assert await input_states(store) == {leased.input_id: schema.DONE}


async def test_when_a_handed_call_cannot_be_stored_nothing_reported_on_it_is_applied(
    store, dispatcher, function_id, monkeypatch
) -> None:
    held = HeldStore(store, monkeypatch)
    held.fail = OSError("the disk is full")
    creating, leased = await hand_while_held(dispatcher, function_id, held)
    held.release()
    with pytest.raises(OSError, match="disk is full"):
        await asyncio.wait_for(creating, 5)
    assert dispatcher.holds("ta-1") == set()
    await dispatcher.report("ta-1", [input_result(leased.input_id)])
    assert await statuses(store) == []
    assert dispatcher.running(function_id) == 0


async def test_a_call_sent_again_while_it_is_being_stored_is_handed_once(
    store, dispatcher, function_id, monkeypatch
) -> None:
    held = HeldStore(store, monkeypatch)
    creating, leased = await hand_while_held(dispatcher, function_id, held)
    second = asyncio.create_task(dispatcher.take(function_id, "ta-2", want=1, wait_s=30))
    await until_waiting(second)
    again = asyncio.create_task(
        dispatcher.create_call(CALL, function_id, api_pb2.CALL_KIND_REMOTE, one_input(), True)
    )
    await until_waiting(again)  # it waits for the first to be stored
    held.release()
    assert await asyncio.wait_for(asyncio.gather(creating, again), 5) == [1, 0]
    await until_waiting(second)  # handed nothing
    assert [item.input_id for item in await store.calls.leased()] == [leased.input_id]
    second.cancel()


async def test_enqueue_tells_the_scheduler_there_is_work(store, dispatcher, function_id) -> None:
    poked: list[str] = []
    dispatcher.on_work = poked.append
    await submit(store, dispatcher, function_id, 2)
    assert poked == [function_id]
    assert dispatcher.functions_with_work() == {function_id}


async def test_idle_since_is_none_while_a_container_holds_an_input(
    store, clock, dispatcher, function_id
) -> None:
    [item] = await submit(store, dispatcher, function_id, 1)
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    assert dispatcher.idle_since("ta-1") is None
    clock.advance(5)
    await dispatcher.report("ta-1", [input_result(item)])
    assert dispatcher.idle_since("ta-1") == clock.now()


# ---- results


async def test_report_success_records_the_output_and_wakes_its_waiter(
    store, dispatcher, function_id
) -> None:
    [item] = await submit(store, dispatcher, function_id, 1)
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    waiting = asyncio.create_task(dispatcher.wait_outputs(CALL, 0, wait_s=30))
    await asyncio.sleep(0)
    assert not waiting.done()
    await dispatcher.report("ta-1", [input_result(item, value=49)])
    [output] = await asyncio.wait_for(waiting, 5)
    result = api_pb2.Result.FromString(output.result)
    assert (output.idx, result.status, pickle.loads(result.data.data)) == (0, SUCCESS, 49)
    assert dispatcher.running(function_id) == 0
    assert dispatcher.holds("ta-1") == set()


async def test_wait_outputs_with_no_output_and_no_wait_returns_nothing(dispatcher) -> None:
    assert await dispatcher.wait_outputs(CALL, 0, wait_s=0) == []


async def test_report_twice_stores_one_output(store, dispatcher, function_id) -> None:
    [item] = await submit(store, dispatcher, function_id, 1)
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    await dispatcher.report("ta-1", [input_result(item)])
    await dispatcher.report("ta-1", [input_result(item, value=2)])
    assert await statuses(store) == [(0, SUCCESS)]


async def test_failure_with_retries_left_waits_out_the_backoff(
    store, clock, dispatcher, function_id
) -> None:
    [item] = await submit(store, dispatcher, function_id, 1)
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    await dispatcher.report("ta-1", [input_result(item, FAILURE)])
    assert await statuses(store) == []
    assert dispatcher.queued(function_id) == 1
    dispatcher.promote_delayed()
    assert await dispatcher.take(function_id, "ta-1", want=1, wait_s=0) == []
    clock.advance(0.99)
    dispatcher.promote_delayed()
    assert await dispatcher.take(function_id, "ta-1", want=1, wait_s=0) == []
    clock.advance(0.01)  # the first retry waits initial_delay_s
    dispatcher.promote_delayed()
    [again] = await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    assert (again.input_id, again.attempts) == (item, 2)


async def test_second_retry_waits_the_backoff_times_the_coefficient(
    store, clock, dispatcher, function_id
) -> None:
    [item] = await submit(store, dispatcher, function_id, 1)
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    await dispatcher.report("ta-1", [input_result(item, FAILURE)])
    clock.advance(1.0)
    dispatcher.promote_delayed()
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    await dispatcher.report("ta-1", [input_result(item, FAILURE)])
    clock.advance(1.5)
    dispatcher.promote_delayed()
    assert await dispatcher.take(function_id, "ta-1", want=1, wait_s=0) == []
    clock.advance(0.5)
    dispatcher.promote_delayed()
    [again] = await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    assert again.attempts == 3


async def test_exhausted_retries_give_the_final_failure(
    store, clock, dispatcher, add_function
) -> None:
    function_id = await add_function(
        retries=api_pb2.RetryPolicy(max_retries=1, initial_delay_s=1.0)
    )
    [item] = await submit(store, dispatcher, function_id, 1)
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    await dispatcher.report("ta-1", [input_result(item, FAILURE)])
    clock.advance(1.0)
    dispatcher.promote_delayed()
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    await dispatcher.report("ta-1", [input_result(item, FAILURE)])
    assert await statuses(store) == [(0, FAILURE)]
    assert (dispatcher.queued(function_id), dispatcher.running(function_id)) == (0, 0)
    assert (await input_states(store))[item] == schema.DONE


async def test_failure_without_retries_is_final_at_once(store, dispatcher, add_function) -> None:
    function_id = await add_function()
    [item] = await submit(store, dispatcher, function_id, 1)
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    await dispatcher.report("ta-1", [input_result(item, api_pb2.RESULT_STATUS_TIMEOUT)])
    assert await statuses(store) == [(0, api_pb2.RESULT_STATUS_TIMEOUT)]


async def test_generator_items_keep_the_lease_until_done(store, dispatcher, add_function) -> None:
    function_id = await add_function(is_generator=True, retries=RETRIES)
    [item] = await submit(store, dispatcher, function_id, 1)
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    await dispatcher.report(
        "ta-1", [input_result(item, gen_index=0), input_result(item, gen_index=1)]
    )
    assert dispatcher.running(function_id) == 1
    done = api_pb2.RESULT_STATUS_GENERATOR_DONE
    await dispatcher.report("ta-1", [input_result(item, done, gen_index=2)])
    assert dispatcher.running(function_id) == 0
    assert await statuses(store) == [(0, SUCCESS), (0, SUCCESS), (0, done)]


async def test_generator_failure_is_final_not_retried(store, dispatcher, add_function) -> None:
    function_id = await add_function(is_generator=True, retries=RETRIES)
    [item] = await submit(store, dispatcher, function_id, 1)
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    await dispatcher.report(
        "ta-1", [input_result(item, gen_index=0), input_result(item, FAILURE, gen_index=1)]
    )
    assert await statuses(store) == [(0, SUCCESS), (0, FAILURE)]
    assert dispatcher.queued(function_id) == 0


# ---- containers that exit


async def test_container_exit_fails_inflight_and_returns_unstarted_inputs(
    store, dispatcher, add_function
) -> None:
    function_id = await add_function()  # no retries: the inflight failure is final
    running, unstarted = await submit(store, dispatcher, function_id, 2)
    await dispatcher.take(function_id, "ta-1", want=2, wait_s=0)
    died = api_pb2.RESULT_STATUS_CONTAINER_DIED
    await dispatcher.container_exited("ta-1", died, "killed", [running])
    assert await statuses(store) == [(0, died)]
    [again] = await dispatcher.take(function_id, "ta-2", want=2, wait_s=0)
    assert (again.input_id, again.attempts) == (unstarted, 1)  # its first attempt never ran
    assert dispatcher.holds("ta-1") == set()


async def test_container_exit_returns_held_inputs_the_worker_did_not_mention(
    store, dispatcher, function_id
) -> None:
    ids = await submit(store, dispatcher, function_id, 2)
    await dispatcher.take(function_id, "ta-1", want=2, wait_s=0)
    await dispatcher.container_exited("ta-1", api_pb2.RESULT_STATUS_CONTAINER_DIED, "", [])
    again = await dispatcher.take(function_id, "ta-2", want=2, wait_s=0)
    assert sorted(i.input_id for i in again) == sorted(ids)
    assert [i.attempts for i in again] == [1, 1]


async def test_container_exit_retries_the_inflight_input_after_the_backoff(
    store, clock, dispatcher, function_id
) -> None:
    [item] = await submit(store, dispatcher, function_id, 1)
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    oom = api_pb2.RESULT_STATUS_OUT_OF_MEMORY
    await dispatcher.container_exited("ta-1", oom, "out of memory", [item])
    assert await statuses(store) == []
    clock.advance(1.0)
    dispatcher.promote_delayed()
    [again] = await dispatcher.take(function_id, "ta-2", want=1, wait_s=0)
    assert again.attempts == 2


async def test_init_failure_is_never_retried(store, dispatcher, function_id) -> None:
    [item] = await submit(store, dispatcher, function_id, 1)
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    init_failure = api_pb2.RESULT_STATUS_INIT_FAILURE
    await dispatcher.container_exited("ta-1", init_failure, "ImportError: x", [item])
    assert await statuses(store) == [(0, init_failure)]
    [output] = await store.calls.outputs_after(CALL, 0, 10)
    assert api_pb2.Result.FromString(output.result).exception_text == "ImportError: x"
    assert dispatcher.queued(function_id) == 0


async def test_fail_queued_finishes_everything_waiting_for_a_function(
    store, dispatcher, function_id
) -> None:
    await submit(store, dispatcher, function_id, 2)
    failure = api_pb2.Result(status=api_pb2.RESULT_STATUS_INIT_FAILURE, exception_text="x")
    await dispatcher.fail_queued(function_id, failure)
    assert await statuses(store) == [(0, failure.status), (1, failure.status)]
    assert dispatcher.queued(function_id) == 0


# ---- lost leases


async def test_leases_expire_only_after_lease_s_without_renewal(
    store, clock, dispatcher, add_function
) -> None:
    function_id = await add_function()  # no retries: a lost lease must not need one
    await submit(store, dispatcher, function_id, 1)
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    clock.advance(LEASE_S - 1)
    await dispatcher.expire_leases()
    assert dispatcher.running(function_id) == 1
    clock.advance(2)
    await dispatcher.expire_leases()
    assert await statuses(store) == []  # not a failure: its host was lost
    assert (dispatcher.running(function_id), dispatcher.queued(function_id)) == (0, 1)


async def test_renewed_leases_do_not_expire(store, clock, dispatcher, function_id) -> None:
    await submit(store, dispatcher, function_id, 1)
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    clock.advance(LEASE_S - 1)
    await dispatcher.renew_leases(["ta-1"])
    clock.advance(LEASE_S - 1)
    await dispatcher.expire_leases()
    assert dispatcher.running(function_id) == 1


async def test_an_expired_lease_runs_again_at_once_without_using_a_retry(
    store, clock, dispatcher, add_function
) -> None:
    function_id = await add_function()  # no retries
    [item] = await submit(store, dispatcher, function_id, 1)
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    clock.advance(LEASE_S + 1)
    await dispatcher.expire_leases()
    [again] = await dispatcher.take(function_id, "ta-2", want=1, wait_s=0)  # no backoff
    assert (again.input_id, again.attempts) == (item, 1)  # the lost run is not counted


async def test_an_input_lost_with_its_host_runs_again_whatever_the_retries(
    store, dispatcher, add_function
) -> None:
    notices: list[tuple[str, str]] = []

    async def notice(function_id: str, text: str) -> None:
        notices.append((function_id, text))

    dispatcher.on_notice = notice
    function_id = await add_function()  # no retries
    [item, waiting] = await submit(store, dispatcher, function_id, 2)
    await dispatcher.take(function_id, "ta-1", want=2, wait_s=0)
    host_lost = api_pb2.RESULT_STATUS_HOST_LOST
    await dispatcher.container_exited("ta-1", host_lost, "the worker stopped", [item])
    assert await statuses(store) == []
    again = await dispatcher.take(function_id, "ta-2", want=2, wait_s=0)
    assert sorted((i.input_id, i.attempts) for i in again) == [(item, 1), (waiting, 1)]
    [(noticed_for, text)] = notices
    assert noticed_for == function_id
    assert "running on a host that failed (the worker stopped)" in text
    assert "without counting against the function's retries (lost 1 of at most 5 times)" in text


async def test_an_input_lost_with_its_host_too_often_fails(store, dispatcher, add_function) -> None:
    function_id = await add_function(retries=RETRIES)
    [item] = await submit(store, dispatcher, function_id, 1)
    host_lost = api_pb2.RESULT_STATUS_HOST_LOST
    for n in range(MAX_HOST_LOSSES + 1):
        [leased] = await dispatcher.take(function_id, f"ta-{n}", want=1, wait_s=0)
        assert leased.attempts == 1  # host losses never use up an attempt
        await dispatcher.container_exited(f"ta-{n}", host_lost, "the worker stopped", [item])
        if n < MAX_HOST_LOSSES:
            assert await statuses(store) == []
    assert await statuses(store) == [(0, host_lost)]
    [output] = await store.calls.outputs_after(CALL, 0, 10)
    text = api_pb2.Result.FromString(output.result).exception_text
    assert text == (
        f"the worker stopped; this input was lost with its host {MAX_HOST_LOSSES} times, "
        "so it is not run again"
    )


async def test_a_generator_lost_with_its_host_is_not_run_again(
    store, dispatcher, add_function
) -> None:
    function_id = await add_function(is_generator=True, retries=RETRIES)
    [item] = await submit(store, dispatcher, function_id, 1)
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    host_lost = api_pb2.RESULT_STATUS_HOST_LOST
    await dispatcher.container_exited("ta-1", host_lost, "the worker stopped", [item])
    assert await statuses(store) == [(0, host_lost)]


# ---- cancellation


async def test_cancel_gives_cancelled_outputs_and_names_the_running_containers(
    store, dispatcher, function_id
) -> None:
    await submit(store, dispatcher, function_id, 2)
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    assert await dispatcher.cancel(CALL) == {"ta-1"}
    cancelled = api_pb2.RESULT_STATUS_CANCELLED
    assert sorted(await statuses(store)) == [(0, cancelled), (1, cancelled)]
    assert dispatcher.running(function_id) == 0
    assert await dispatcher.take(function_id, "ta-2", want=1, wait_s=0) == []


async def test_cancelled_inputs_no_longer_count_as_queued_work(
    store, dispatcher, function_id
) -> None:
    await submit(store, dispatcher, function_id, 1)
    await dispatcher.cancel(CALL)
    assert dispatcher.queued(function_id) == 0
    assert dispatcher.functions_with_work() == set()


# ---- restarts


async def test_restore_rebuilds_the_queues_and_leases_from_the_store(
    store, clock, definitions, function_id
) -> None:
    first = Dispatcher(store, clock, definitions.__getitem__, lambda _: 1)
    running, failed, waiting = await submit(store, first, function_id, 3)
    await first.take(function_id, "ta-1", want=1, wait_s=0)
    await first.take(function_id, "ta-2", want=1, wait_s=0)
    await first.report("ta-2", [input_result(failed, FAILURE)])  # back after a 1 s backoff

    fresh = Dispatcher(store, clock, definitions.__getitem__, lambda _: 1)
    await fresh.restore()
    assert fresh.holds("ta-1") == {running}
    assert (fresh.queued(function_id), fresh.running(function_id)) == (2, 1)
    [ready] = await fresh.take(function_id, "ta-3", want=2, wait_s=0)
    assert ready.input_id == waiting
    assert await fresh.take(function_id, "ta-4", want=2, wait_s=0) == []
    clock.advance(1.0)
    fresh.promote_delayed()
    [again] = await fresh.take(function_id, "ta-4", want=2, wait_s=0)
    assert (again.input_id, again.attempts) == (failed, 2)


async def test_an_exiting_container_cannot_fail_another_containers_input(
    store, dispatcher, add_function
) -> None:
    function_id = await add_function()
    [item] = await submit(store, dispatcher, function_id, 1)
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    died = api_pb2.RESULT_STATUS_CONTAINER_DIED
    await dispatcher.container_exited("ta-2", died, "gone", [item])
    assert await statuses(store) == []
    assert dispatcher.holds("ta-1") == {item}


async def test_an_exiting_container_cannot_requeue_another_containers_input(
    store, dispatcher, function_id
) -> None:
    [item] = await submit(store, dispatcher, function_id, 1)
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    await dispatcher.container_exited("ta-2", api_pb2.RESULT_STATUS_CONTAINER_DIED, "", [])
    assert await dispatcher.take(function_id, "ta-3", want=1, wait_s=0) == []
    assert dispatcher.holds("ta-1") == {item}


async def test_inputs_a_container_never_received_are_sent_again(
    store, dispatcher, function_id
) -> None:
    """A lease whose reply was lost (the control plane restarted) is delivered on the next ask."""
    [item] = await submit(store, dispatcher, function_id, 1)
    [first] = await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    [again] = await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    assert first.input_id == again.input_id == item
    assert again.attempts == 1


async def test_a_generator_that_dies_after_yielding_fails_after_its_items(
    store, dispatcher, add_function
) -> None:
    function_id = await add_function(is_generator=True, retries=RETRIES)
    [item] = await submit(store, dispatcher, function_id, 1)
    await dispatcher.take(function_id, "ta-1", want=1, wait_s=0)
    await dispatcher.report("ta-1", [input_result(item, gen_index=0)])
    died = api_pb2.RESULT_STATUS_CONTAINER_DIED
    await dispatcher.container_exited("ta-1", died, "killed", [item])
    assert await statuses(store) == [(0, SUCCESS), (0, died)]
    assert dispatcher.queued(function_id) == 0  # not retried: its item was delivered


async def test_a_generator_failure_after_a_restart_still_lands_after_its_items(
    store, clock, definitions, add_function
) -> None:
    function_id = await add_function(is_generator=True, retries=RETRIES)
    first = Dispatcher(store, clock, definitions.__getitem__, lambda _: 1)
    [item] = await submit(store, first, function_id, 1)
    await first.take(function_id, "ta-1", want=1, wait_s=0)
    await first.report("ta-1", [input_result(item, gen_index=0), input_result(item, gen_index=1)])

    fresh = Dispatcher(store, clock, definitions.__getitem__, lambda _: 1)
    await fresh.restore()
    died = api_pb2.RESULT_STATUS_CONTAINER_DIED
    await fresh.container_exited("ta-1", died, "killed", [item])
    assert await statuses(store) == [(0, SUCCESS), (0, SUCCESS), (0, died)]


async def test_stopping_fails_the_waiting_requests_as_unreachable(
    store, dispatcher, function_id
) -> None:
    await submit(store, dispatcher, function_id, 1)
    outputs = asyncio.create_task(dispatcher.wait_outputs(CALL, 0, 30.0, known_empty=True))
    inputs = asyncio.create_task(dispatcher.take("fu-none", "ta-9", want=1, wait_s=30.0))
    for _ in range(5):
        await asyncio.sleep(0)  # both are waiting now
    assert not outputs.done() and not inputs.done()
    dispatcher.stop_waiting()
    for waiting in (outputs, inputs):
        with pytest.raises(errors.ConnectionError, match="the control plane is stopping"):
            await waiting
    with pytest.raises(errors.ConnectionError):  # and none waits from here on
        await dispatcher.wait_outputs(CALL, 0, 30.0, known_empty=True)
