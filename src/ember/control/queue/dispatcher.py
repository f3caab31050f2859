"""The input queue: hands queued inputs to containers, applies their results, retries failures.

The store holds the truth (see `ember.control.store.calls`); this object keeps what is needed to
answer fast: per function, the ids of inputs ready to run and of inputs waiting out a retry delay;
per container, the inputs it holds; per call, the callers waiting for outputs. `restore()` rebuilds
it all from the store after a restart.

One input's path: `create_call` (or `enqueue`) queues it ─▶ a container's `take` leases it (a
container already waiting is handed it by `create_call` itself, even before the call is stored)
─▶ `report` stores its result and wakes the caller ─▶ or a failure (`report`, `container_exited`,
`expire_leases`) puts it back with a delay while it has retries left. A run lost because its
host failed under it (the worker stopped or died, its image daemon ended:
`RESULT_STATUS_HOST_LOST`) is not the function's failure: the input runs again at once without
using up a retry, up to `MAX_HOST_LOSSES` times, and the app's log says so.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ember import errors
from ember.control.clock import Clock
from ember.control.queue.retries import retry_delay
from ember.control.store import (
    AFTER_LAST_ITEM,
    FinalResult,
    LeasedInput,
    NewInput,
    QueuedInput,
    Store,
    StoredOutput,
    first_lease,
    parse_input_id,
)
from ember.proto import api_pb2

# How long a container holds an input without its worker heartbeating before the input is
# presumed lost and run again.
LEASE_S = 30.0

STOPPING = "the control plane is stopping; ask again"

# How many times an input may be lost with its host before it fails: a host that fails every
# time it runs the input is, in the end, the input's own doing (it brings the machine down).
MAX_HOST_LOSSES = 5

# Failures that may be retried; an import failure or a cancellation never is.
RETRYABLE = {
    api_pb2.RESULT_STATUS_FAILURE,
    api_pb2.RESULT_STATUS_TIMEOUT,
    api_pb2.RESULT_STATUS_CONTAINER_DIED,
    api_pb2.RESULT_STATUS_OUT_OF_MEMORY,
}


@dataclass
class Lease:
    function_id: str
    container_id: str
    attempts: int


@dataclass(eq=False)  # each waiter is itself alone: found on its list by identity
class _InputWaiter:
    """A container's `take` waiting for an input: handed the inputs leased to it straight away
    (see `create_call`), or nothing, which sends it to look at the queue again."""

    container_id: str
    handed: asyncio.Future[list[LeasedInput]]

    def hand(self, leased: list[LeasedInput]) -> None:
        if not self.handed.done():
            self.handed.set_result(leased)


class Dispatcher:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        definition: Callable[[str], api_pb2.FunctionDefinition],
        containers_of: Callable[[str], int],
    ) -> None:
        """`definition(function_id)` and `containers_of(function_id)` come from the scheduler's
        view of the cluster; the latter divides a backlog fairly between containers."""
        self._store = store
        self._clock = clock
        self._definition = definition
        self._containers_of = containers_of
        self._ready: dict[str, deque[str]] = defaultdict(deque)
        self._delayed: list[tuple[float, str, str]] = []  # heap of (available_at, input, function)
        self._leases: dict[str, Lease] = {}
        self._held: dict[str, set[str]] = defaultdict(set)  # container -> inputs it holds
        self._idle_since: dict[str, float] = {}
        self._input_waiters: dict[str, deque[_InputWaiter]] = defaultdict(deque)
        # Calls `create_call` is storing, each set once it is done (see `_until_stored`).
        self._storing: dict[str, asyncio.Event] = {}
        # Callers waiting for a call's outputs; each is handed the outputs stored after it began
        # waiting, so a wait costs no query once it has started.
        self._output_waiters: dict[str, list[asyncio.Future[list[StoredOutput]]]] = defaultdict(
            list
        )
        self.on_work: Callable[[str], None] = lambda _function_id: None
        self._stopping = False  # `stop_waiting` was called: no request waits any more
        # (function_id, text): a line for the function's app log, where its callers see it.
        self.on_notice: Callable[[str, str], Awaitable[None]] = _no_notice

    # ---- state for the autoscaler

    def queued(self, function_id: str) -> int:
        delayed = sum(1 for _, _, fid in self._delayed if fid == function_id)
        return len(self._ready.get(function_id, ())) + delayed

    def running(self, function_id: str) -> int:
        return sum(1 for lease in self._leases.values() if lease.function_id == function_id)

    def functions_with_work(self) -> set[str]:
        busy = {fid for fid, ready in self._ready.items() if ready}
        busy.update(fid for _, _, fid in self._delayed)
        busy.update(lease.function_id for lease in self._leases.values())
        return busy

    def idle_since(self, container_id: str) -> float | None:
        """When the container last finished an input, or None while it holds one."""
        if self._held.get(container_id):
            return None
        return self._idle_since.setdefault(container_id, self._clock.now())

    # ---- start-up

    async def restore(self) -> None:
        self.enqueue(await self._store.calls.queued())
        for leased in await self._store.calls.leased():
            assert leased.container_id is not None
            self._add_lease(
                leased.input_id, leased.function_id, leased.container_id, leased.attempts
            )

    # ---- inputs in

    async def create_call(
        self,
        call_id: str,
        function_id: str,
        kind: int,
        new_inputs: Sequence[NewInput],
        complete: bool,
    ) -> int:
        """Store a call with its first inputs and queue them; returns how many were new.

        When a container is already waiting for this function's inputs, none are queued ahead
        of these and the call is new, the first is handed to it before the call is stored, then
        leased to it in the transaction that stores the call. That transaction then runs while
        the input travels to the container, where before the input waited for it (a warm
        `.remote()` took about 6% less time, measured interleaved). Until it ends, what the
        container reports on the input waits (`_until_stored`); should it fail, the input's
        lease goes, and with it whatever the container reports on it. Correctness does not hang
        on the loop turn between the two: only the time the input leaves does."""
        await self._until_stored([call_id])  # the same call sent again, still being stored
        stored = self._storing[call_id] = asyncio.Event()
        try:
            now = self._clock.now()
            waiter = None
            if (
                new_inputs
                and self._input_waiters.get(function_id)
                and not await self._store.calls.is_stored(call_id)  # sent again: it ran already
            ):
                waiter = self._waiting_container(function_id)
            if waiter is None:
                queued = await self._store.calls.create_call(
                    call_id, function_id, kind, new_inputs, complete, now
                )
                self.enqueue(queued)
                return len(queued)
            leased = first_lease(call_id, function_id, new_inputs[0], waiter.container_id)
            self._add_lease(leased.input_id, function_id, waiter.container_id, 1)
            waiter.hand([leased])
            # A loop turn, in which the container's request sends the input on its way.
            await asyncio.sleep(0)
            try:
                _, queued = await self._store.calls.create_call_leasing_first(
                    call_id,
                    function_id,
                    kind,
                    new_inputs,
                    complete,
                    now,
                    lease_first_to=(waiter.container_id, now + LEASE_S),
                )
            except BaseException:
                self._drop_lease(leased.input_id)  # not stored: nothing it reports is applied
                raise
            self.enqueue(queued)
            return len(queued) + 1
        finally:
            del self._storing[call_id]
            stored.set()

    async def _until_stored(self, call_ids: Iterable[str]) -> None:
        """Wait until `create_call` has stored these calls, where it is storing them."""
        for call_id in call_ids:
            while (storing := self._storing.get(call_id)) is not None:
                await storing.wait()

    async def _inputs_stored(self, input_ids: Iterable[str]) -> None:
        if self._storing:  # (rarely: only while a call's transaction runs)
            await self._until_stored({parse_input_id(value)[0] for value in input_ids})

    def _waiting_container(self, function_id: str) -> _InputWaiter | None:
        """The container that has waited longest for this function's inputs, taken off the
        waiting list; None when none waits, or inputs queued before would be passed over."""
        if self._ready.get(function_id):
            return None
        return self._next_waiter(function_id)

    def _next_waiter(self, function_id: str) -> _InputWaiter | None:
        """The longest-waiting request still waiting for the function's inputs, taken off the
        list (those that gave up meanwhile are dropped on the way)."""
        waiters = self._input_waiters.get(function_id)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.handed.done():
                return waiter
        return None

    def enqueue(self, inputs: Iterable[QueuedInput]) -> None:
        now = self._clock.now()
        woken: set[str] = set()
        for item in inputs:
            if item.available_at > now:
                heapq.heappush(self._delayed, (item.available_at, item.input_id, item.function_id))
                continue
            self._ready[item.function_id].append(item.input_id)
            self._wake_one(item.function_id)
            woken.add(item.function_id)
        for function_id in woken:
            self.on_work(function_id)

    def promote_delayed(self) -> None:
        """Move inputs whose retry delay has passed into the ready queues."""
        now = self._clock.now()
        due = []
        while self._delayed and self._delayed[0][0] <= now:
            available_at, input_id, function_id = heapq.heappop(self._delayed)
            due.append(QueuedInput(input_id, function_id, available_at))
        self.enqueue(due)

    def _wake_one(self, function_id: str) -> None:
        waiter = self._next_waiter(function_id)
        if waiter is not None:
            waiter.hand([])

    # ---- containers take inputs

    async def take(
        self, function_id: str, container_id: str, want: int, wait_s: float
    ) -> list[LeasedInput]:
        """Lease up to `want` inputs to a container, waiting up to `wait_s` for one."""
        if want > 0 and (held := self._held.get(container_id)):
            # A container asks only once it has finished what it held: inputs it still holds
            # were leased to it but never reached it (the reply was lost). Send them again.
            await self._inputs_stored(held)
            return (await self._store.calls.leased(container_ids=[container_id]))[:want]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            ready = self._ready.get(function_id)
            if ready and want > 0:
                share = max(1, len(ready) // max(1, self._containers_of(function_id)))
                ids = [ready.popleft() for _ in range(min(want, share, len(ready)))]
                leased = await self._store.calls.lease(
                    ids, container_id, self._clock.now() + LEASE_S
                )
                for item in leased:
                    self._add_lease(item.input_id, function_id, container_id, item.attempts)
                if leased:
                    return leased
                continue  # every one was cancelled meanwhile
            remaining = deadline - loop.time()
            if remaining <= 0 or want <= 0:
                return []
            self._refuse_if_stopping()
            waiter = _InputWaiter(container_id, loop.create_future())
            self._input_waiters[function_id].append(waiter)
            try:
                async with asyncio.timeout(remaining):  # (wait_for would cost a loop turn more)
                    handed = await waiter.handed
            except TimeoutError:
                return []
            finally:
                if not waiter.handed.done():
                    waiter.handed.cancel()
                self._forget_waiter(function_id, waiter)
            if handed:
                return handed

    def _forget_waiter(self, function_id: str, waiter: _InputWaiter) -> None:
        """Take a request that stopped waiting off the list, if nothing took it off: a
        container idle for a day asks again every 30 s, and each request that timed out would
        stay there until an input came."""
        waiters = self._input_waiters.get(function_id)
        if waiters is None:
            return
        # Looked for first: a waiter handed an input is off the list already, and the
        # ValueError of `remove` would format its repr (3% of the loop's time, measured).
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            del self._input_waiters[function_id]

    def _add_lease(self, input_id: str, function_id: str, container_id: str, attempts: int) -> None:
        self._leases[input_id] = Lease(function_id, container_id, attempts)
        self._held[container_id].add(input_id)

    def _drop_lease(self, input_id: str) -> Lease | None:
        lease = self._leases.pop(input_id, None)
        if lease is not None:
            held = self._held.get(lease.container_id)
            if held is not None:
                held.discard(input_id)
                if not held:
                    self._idle_since[lease.container_id] = self._clock.now()
        return lease

    # ---- results in

    async def report(self, container_id: str, results: Sequence[api_pb2.InputResult]) -> None:
        """Apply results a container reported for inputs it holds (a container acts only as
        itself: results for inputs it does not hold are ignored)."""
        await self._inputs_stored(item.input_id for item in results)
        finals: list[FinalResult] = []
        failed: list[tuple[str, Lease, api_pb2.Result]] = []
        for item in results:
            lease = self._leases.get(item.input_id)
            if lease is None or lease.container_id != container_id:
                continue  # reported before, cancelled, re-leased, or not this container's
            definition = self._definition(lease.function_id)
            status = item.result.status
            if definition.is_generator and status == api_pb2.RESULT_STATUS_SUCCESS:
                finals.append(
                    FinalResult(
                        item.input_id, item.gen_index, item.result.SerializeToString(), False
                    )
                )
            elif status in RETRYABLE and not definition.is_generator:
                failed.append((item.input_id, lease, item.result))
            else:
                finals.append(
                    FinalResult(
                        item.input_id, item.gen_index, item.result.SerializeToString(), True
                    )
                )
        await self._finish(finals)
        await self._fail(failed)

    async def _finish(self, finals: Sequence[FinalResult]) -> None:
        stored = await self._store.calls.record_results(finals)
        for item in finals:
            if item.finishes_input:
                self._drop_lease(item.input_id)
        for call_id, outputs in stored.items():
            self._wake_outputs(call_id, outputs)

    async def _fail(self, failed: Sequence[tuple[str, Lease, api_pb2.Result]]) -> None:
        """Failed attempts: run again after the backoff while retries last, else final; runs
        lost with their host run again at once (see `_host_lost`)."""
        now = self._clock.now()
        finals = []
        retry: dict[float, list[str]] = defaultdict(list)
        lost: list[tuple[str, Lease, api_pb2.Result]] = []
        for input_id, lease, result in failed:
            definition = self._definition(lease.function_id)
            delay = None
            if result.status == api_pb2.RESULT_STATUS_HOST_LOST and not definition.is_generator:
                lost.append((input_id, lease, result))
                continue
            # A generator is never run again: its items already reached the caller.
            if result.status in RETRYABLE and not definition.is_generator:
                delay = retry_delay(definition.retries, lease.attempts)
            if delay is None:
                finals.append(
                    FinalResult(input_id, AFTER_LAST_ITEM, result.SerializeToString(), True)
                )
            else:
                retry[now + delay].append(input_id)
        await self._finish(finals)
        for available_at, input_ids in retry.items():
            await self._store.calls.requeue(input_ids, available_at, undo_attempt=False)
            self.enqueue(
                QueuedInput(input_id, lease.function_id, available_at)
                for input_id in input_ids
                if (lease := self._drop_lease(input_id)) is not None
            )
        await self._host_lost(lost)

    async def _host_lost(self, lost: Sequence[tuple[str, Lease, api_pb2.Result]]) -> None:
        """Runs whose host failed under them: queued again at once, their attempt not counted,
        while an input has been lost fewer than MAX_HOST_LOSSES times; then final."""
        by_function: dict[str, list[tuple[str, api_pb2.Result]]] = defaultdict(list)
        for input_id, lease, result in lost:
            by_function[lease.function_id].append((input_id, result))
        now = self._clock.now()
        for function_id, items in by_function.items():
            reason = items[0][1].exception_text
            requeued, exhausted = await self._store.calls.requeue_lost(
                [input_id for input_id, _ in items], now, MAX_HOST_LOSSES
            )
            self.enqueue(
                QueuedInput(input_id, function_id, now)
                for input_id in requeued
                if self._drop_lease(input_id) is not None
            )
            results = dict(items)
            finals = []
            for input_id in exhausted:
                result = api_pb2.Result()
                result.CopyFrom(results[input_id])
                result.exception_text = (
                    f"{result.exception_text}; this input was lost with its host "
                    f"{MAX_HOST_LOSSES} times, so it is not run again"
                )
                finals.append(
                    FinalResult(input_id, AFTER_LAST_ITEM, result.SerializeToString(), True)
                )
            await self._finish(finals)
            if requeued:
                most = max(requeued.values())
                await self.on_notice(
                    function_id,
                    f"{len(requeued)} input(s) were running on a host that failed ({reason}); "
                    "they run again without counting against the function's retries "
                    f"(lost {most} of at most {MAX_HOST_LOSSES} times)",
                )
            if exhausted:
                await self.on_notice(
                    function_id,
                    f"{len(exhausted)} input(s) failed: lost with their host "
                    f"{MAX_HOST_LOSSES} times ({reason})",
                )

    async def container_exited(
        self, container_id: str, reason: int, message: str, inflight: Sequence[str]
    ) -> None:
        """A container is gone: the input it was running failed an attempt; the others it held
        never started and go back to the queue as they were."""
        result = api_pb2.Result(status=reason, exception_text=message)
        await self._inputs_stored(list(self._held.get(container_id, ())))
        held = self._held.pop(container_id, set())
        self._idle_since.pop(container_id, None)
        inflight = [input_id for input_id in inflight if input_id in held]
        back = [input_id for input_id in held if input_id not in inflight]
        await self._store.calls.requeue(back, self._clock.now(), undo_attempt=True)
        self.enqueue(
            QueuedInput(input_id, lease.function_id, self._clock.now())
            for input_id in back
            if (lease := self._leases.pop(input_id, None)) is not None
        )
        failed = [
            (input_id, lease, result)
            for input_id in inflight
            if (lease := self._leases.get(input_id)) is not None
        ]
        await self._fail(failed)

    def _forget_queued(self, input_ids: set[str]) -> None:
        """Drop inputs from the ready and delayed queues (they will not run)."""
        for function_id, ready in list(self._ready.items()):
            self._ready[function_id] = deque(i for i in ready if i not in input_ids)
        self._delayed = [entry for entry in self._delayed if entry[1] not in input_ids]
        heapq.heapify(self._delayed)

    async def fail_queued(self, function_id: str, result: api_pb2.Result) -> None:
        """Fail every input waiting for a function that cannot start (its import failed)."""
        ids = list(self._ready.get(function_id, ()))
        ids += [i for _, i, fid in self._delayed if fid == function_id]
        self._forget_queued(set(ids))
        await self._finish(
            [FinalResult(i, AFTER_LAST_ITEM, result.SerializeToString(), True) for i in ids]
        )

    async def expire_leases(self) -> None:
        """Inputs whose container stopped renewing their lease failed an attempt."""
        expired = await self._store.calls.leased(expired_before=self._clock.now())
        result = api_pb2.Result(
            status=api_pb2.RESULT_STATUS_HOST_LOST,
            exception_text="the container running this input was lost (its host stopped answering)",
        )
        failed = []
        for item in expired:
            lease = self._leases.get(item.input_id)
            if lease is None:
                assert item.container_id is not None
                self._add_lease(item.input_id, item.function_id, item.container_id, item.attempts)
                lease = self._leases[item.input_id]
            failed.append((item.input_id, lease, result))
        await self._fail(failed)

    async def renew_leases(self, container_ids: Sequence[str]) -> None:
        await self._store.calls.renew_leases(container_ids, self._clock.now() + LEASE_S)

    def holds(self, container_id: str) -> set[str]:
        return set(self._held.get(container_id, ()))

    # ---- cancellation

    async def cancel(self, call_id: str) -> set[str]:
        """Cancel a call's unfinished inputs; returns the containers that were running them."""
        cancelled = await self._store.calls.cancel(call_id)
        self._forget_queued({item.input_id for item in cancelled})
        result = api_pb2.Result(
            status=api_pb2.RESULT_STATUS_CANCELLED, exception_text="the function call was cancelled"
        )
        containers = {item.container_id for item in cancelled if item.container_id}
        for item in cancelled:
            self._drop_lease(item.input_id)
        await self._finish(
            [
                FinalResult(item.input_id, AFTER_LAST_ITEM, result.SerializeToString(), True)
                for item in cancelled
            ]
        )
        return containers

    # ---- outputs out

    async def wait_outputs(
        self,
        call_id: str,
        after_seq: int,
        wait_s: float,
        limit: int = 1000,
        *,
        known_empty: bool = False,
    ) -> list[StoredOutput]:
        """Outputs of a call after `after_seq`, waiting up to `wait_s` for the first.

        The store is read once, before waiting; outputs stored after that reach the waiter from
        memory. `known_empty` skips even that read: the caller has just made the call's inputs,
        so no output can exist yet (no query at all on a `.remote()`)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[list[StoredOutput]] = loop.create_future()
        self._output_waiters[call_id].append(waiter)  # first, so nothing stored slips past
        try:
            if not known_empty:
                outputs = await self._store.calls.outputs_after(call_id, after_seq, limit)
                if outputs or wait_s <= 0:
                    return outputs
            self._refuse_if_stopping()
            try:
                async with asyncio.timeout(wait_s):
                    delivered = await waiter
            except TimeoutError:
                return []
            return [o for o in delivered if o.seq > after_seq][:limit]
        finally:
            waiters = self._output_waiters.get(call_id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._output_waiters[call_id]

    # ---- stopping

    def stop_waiting(self) -> None:
        """The control plane is stopping: every request waiting here (a long-poll for outputs, a
        container asking for inputs) fails now as one that cannot reach it, and so does any
        that would wait from here on. Their callers ask again, of the control plane that takes
        over; left to the server's shutdown, they would wait out its grace before being cut
        off."""
        self._stopping = True
        futures: list[asyncio.Future[Any]] = [
            *(waiter for waiters in self._output_waiters.values() for waiter in waiters),
            *(waiter.handed for waiters in self._input_waiters.values() for waiter in waiters),
        ]
        for future in futures:
            if not future.done():
                future.set_exception(errors.ConnectionError(STOPPING))

    def _refuse_if_stopping(self) -> None:
        if self._stopping:
            raise errors.ConnectionError(STOPPING)

    def _wake_outputs(self, call_id: str, outputs: list[StoredOutput]) -> None:
        for waiter in self._output_waiters.pop(call_id, []):
            if not waiter.done():
                waiter.set_result(outputs)


async def _no_notice(function_id: str, text: str) -> None:
    pass
