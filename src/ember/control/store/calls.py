"""Calls, their inputs and their outputs: the durable half of the input queue.

Lifecycle of one input, as the dispatcher drives it:

    put (state queued) ─▶ lease to a container (leased, attempts+1, lease_expires_at)
        ├─ result reported ─▶ record_results: an output row, input done
        ├─ failed, retries left ─▶ requeue (queued, available_at = now + backoff)
        └─ lease expires (container or host lost) ─▶ counted as a failed attempt, as above

An input id is derived from its call id and position (`in-<call>-<idx>`), so that putting the
same inputs twice (a client retrying after a lost connection) stores them once, and an output can
name its call and position without a lookup. Outputs are unique per (input, yielded item): a result
reported twice (a worker retrying after the control plane restarted) is stored once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ember import errors
from ember.control.store import schema
from ember.control.store.dialect import insert_ignore_for
from ember.control.store.engine import Engine, Prepared
from ember.proto import api_pb2

CALL_ID = re.compile(r"^fc-[0-9a-f]{16,32}$")


def input_id(call_id: str, idx: int) -> str:
    return f"in-{call_id.removeprefix('fc-')}-{idx}"


def parse_input_id(value: str) -> tuple[str, int]:
    """The call id and position an input id was made from."""
    _, call, idx = value.split("-")
    return f"fc-{call}", int(idx)


def _check_call_id(call_id: str) -> None:
    if not CALL_ID.match(call_id):
        raise errors.InvalidError(f"call id {call_id!r} is not of the form fc-<hex>")


@dataclass(frozen=True)
class NewInput:
    idx: int
    args: bytes | None
    args_blob_id: str | None


@dataclass(frozen=True)
class QueuedInput:
    input_id: str
    function_id: str
    available_at: float


@dataclass(frozen=True)
class LeasedInput:
    input_id: str
    function_id: str
    idx: int
    args: bytes | None
    args_blob_id: str | None
    attempts: int
    container_id: str | None = None


def first_lease(call_id: str, function_id: str, first: NewInput, container_id: str) -> LeasedInput:
    """A call's first input as it is when `create_call_leasing_first` leases it to a container
    (the dispatcher may hand it over before the call is stored)."""
    return LeasedInput(
        input_id(call_id, first.idx),
        function_id,
        first.idx,
        first.args,
        first.args_blob_id,
        1,
        container_id,
    )


@dataclass(frozen=True)
class Call:
    call_id: str
    function_id: str
    kind: int
    num_inputs: int
    inputs_complete: bool
    cancelled: bool


@dataclass(frozen=True)
class StoredOutput:
    seq: int
    idx: int
    gen_index: int
    result: bytes


# A final result's `gen_index` when its producer does not know it: the store places it after the
# items the input has yielded (none, for a plain function), so it never collides with one.
AFTER_LAST_ITEM = -1


@dataclass(frozen=True)
class FinalResult:
    input_id: str
    gen_index: int  # or AFTER_LAST_ITEM
    result: bytes  # proto Result
    finishes_input: bool  # False for an item a generator yielded


_INPUT_COLUMNS = (
    "id",
    "call_id",
    "function_id",
    "idx",
    "args",
    "args_blob_id",
    "state",
    "available_at",
    "container_id",
    "lease_expires_at",
    "attempts",
)


def _input_rows(
    call_id: str, function_id: str, new_inputs: Sequence[NewInput], now: float
) -> list[dict[str, object]]:
    # Every column of _INPUT_COLUMNS in every row, so that one leased at once
    # (`create_call_leasing_first`) goes in the same statement as the queued ones.
    return [
        {
            "id": input_id(call_id, item.idx),
            "call_id": call_id,
            "function_id": function_id,
            "idx": item.idx,
            "args": item.args,
            "args_blob_id": item.args_blob_id,
            "state": schema.QUEUED,
            "available_at": now,
            "container_id": None,
            "lease_expires_at": None,
            "attempts": 0,
        }
        for item in new_inputs
    ]


def _binds(*names: str) -> dict[str, sa.BindParameter[Any]]:
    return {name: sa.bindparam(name) for name in names}


# The statements on every call's path, made once: run with parameters, SQLAlchemy reuses their
# compiled form (building a statement per call cost more than running it). Those `Prepared`
# run on the driver's cursor where the engine allows (see `ember.control.store.engine`).
_i = schema.inputs.c
_o = schema.outputs.c
_CALL_COLUMNS = (
    "id",
    "function_id",
    "kind",
    "created_at",
    "num_inputs",
    "inputs_complete",
    "cancelled",
)
_INSERT_CALL = Prepared(
    lambda dialect: insert_ignore_for(dialect, schema.calls).values(_binds(*_CALL_COLUMNS))
)
_INSERT_INPUT = Prepared.of(schema.inputs.insert().values(_binds(*_INPUT_COLUMNS)))
_CALL_STORED = Prepared.of(
    sa.select(schema.calls.c.id).where(schema.calls.c.id == sa.bindparam("id"))
)
_OUTPUT_COLUMNS = ("call_id", "input_id", "idx", "gen_index", "result", "result_blob_id")
# Outputs stored, skipping any stored before; returns those stored now.
_STORE_OUTPUT = Prepared(
    lambda dialect: (
        insert_ignore_for(dialect, schema.outputs)
        .values(_binds(*_OUTPUT_COLUMNS))
        # (In the parameters' order where one statement stores many: PostgreSQL's.)
        .returning(
            _o.seq, _o.call_id, _o.idx, _o.gen_index, _o.result, sort_by_parameter_order=True
        )
    )
)
_FINISH_INPUT = Prepared.of(
    schema.inputs.update()
    .where(_i.id == sa.bindparam("input_id"))
    .values(state=schema.DONE, args=None, lease_expires_at=None)
)


def _in_state(state: str) -> sa.ColumnElement[bool]:
    """`inputs.state = state`, spelled so that no index serves it, for statements that name
    their inputs by id: SQLite's planner would otherwise take the state index (every queued input
    of every call) over the primary key, so that each lease of a few inputs read the whole queue
    (41% of the control plane's time in a 60,000-input map, measured)."""
    return _i.state.concat("") == state


_LEASE = (
    schema.inputs.update()
    .where(_i.id.in_(sa.bindparam("ids", expanding=True)), _in_state(schema.QUEUED))
    .values(
        state=schema.LEASED,
        container_id=sa.bindparam("to_container"),
        lease_expires_at=sa.bindparam("expires_at"),
        attempts=_i.attempts + 1,
    )
    .returning(_i.id, _i.function_id, _i.idx, _i.args, _i.args_blob_id, _i.attempts)
)
_OUTPUTS_AFTER = (
    sa.select(_o.seq, _o.idx, _o.gen_index, _o.result)
    .where(_o.call_id == sa.bindparam("call_id"), _o.seq > sa.bindparam("after_seq"))
    .order_by(_o.seq)
    .limit(sa.bindparam("limit"))
)
_NEXT_GEN_INDEX = sa.select(sa.func.coalesce(sa.func.max(_o.gen_index) + 1, 0)).where(
    _o.input_id == sa.bindparam("input_id")
)
_RENEW = (
    schema.inputs.update()
    .where(
        _i.container_id.in_(sa.bindparam("containers", expanding=True)),
        _i.state == schema.LEASED,
    )
    .values(lease_expires_at=sa.bindparam("expires_at"))
)


def result_blob_id(result: bytes) -> str | None:
    """The blob a serialized `Result` keeps its payload in, if any. Most results are inline and
    small: the substring test spares them a parse."""
    if b"bl-" not in result:
        return None
    return api_pb2.Result.FromString(result).data.blob_id or None


class CallStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def create_call(
        self,
        call_id: str,
        function_id: str,
        kind: int,
        new_inputs: Sequence[NewInput],
        complete: bool,
        now: float,
    ) -> list[QueuedInput]:
        """Record a call with its first inputs, in one transaction; returns the new inputs.

        A call id seen before (the client retrying a request whose answer it lost) stores only
        the inputs it lacks."""
        _, queued = await self.create_call_leasing_first(
            call_id, function_id, kind, new_inputs, complete, now, lease_first_to=None
        )
        return queued

    async def is_stored(self, call_id: str) -> bool:
        """Whether a call of this id is stored: one sent again by a client that lost its
        answer. (Its id's form is checked first.)"""
        _check_call_id(call_id)
        async with self._engine.connect() as conn:
            return bool((await conn.run(_CALL_STORED, {"id": call_id})).rows)

    async def create_call_leasing_first(
        self,
        call_id: str,
        function_id: str,
        kind: int,
        new_inputs: Sequence[NewInput],
        complete: bool,
        now: float,
        *,
        lease_first_to: tuple[str, float] | None,
    ) -> tuple[LeasedInput | None, list[QueuedInput]]:
        """`create_call`, with the first input leased at once to a container, given as
        `(container_id, lease_expires_at)`: one transaction, where queueing the input and then
        leasing it take two. Returns the leased input (None when nothing was leased: no
        container given, or a call id seen before) and the queued ones."""
        _check_call_id(call_id)
        async with self._engine.begin() as conn:
            inserted = await conn.run(
                _INSERT_CALL,
                {
                    "id": call_id,
                    "function_id": function_id,
                    "kind": kind,
                    "created_at": now,
                    "num_inputs": len(new_inputs),
                    "inputs_complete": complete,
                    "cancelled": False,
                },
            )
            if inserted.rowcount == 1:
                rows = _input_rows(call_id, function_id, new_inputs, now)
                leased = None
                if rows and lease_first_to is not None:
                    container_id, lease_expires_at = lease_first_to
                    first = rows[0]
                    first.update(
                        state=schema.LEASED,
                        container_id=container_id,
                        lease_expires_at=lease_expires_at,
                        attempts=1,
                    )
                    leased = first_lease(call_id, function_id, new_inputs[0], container_id)
                if rows:
                    await conn.run(_INSERT_INPUT, rows)
                queued = rows[1:] if leased is not None else rows
                return leased, [QueuedInput(str(row["id"]), function_id, now) for row in queued]
        return None, await self.put_inputs(call_id, function_id, new_inputs, complete, now)

    async def put_inputs(
        self,
        call_id: str,
        function_id: str,
        new_inputs: Sequence[NewInput],
        complete: bool,
        now: float,
    ) -> list[QueuedInput]:
        """Store inputs (idempotent by position) and return the ones that were new."""
        rows = _input_rows(call_id, function_id, new_inputs, now)
        async with self._engine.begin() as conn:
            if rows:
                existing = set(
                    (
                        await conn.execute(
                            sa.select(schema.inputs.c.id).where(
                                schema.inputs.c.id.in_([row["id"] for row in rows])
                            )
                        )
                    ).scalars()
                )
                rows = [row for row in rows if row["id"] not in existing]
            if rows:
                await conn.run(_INSERT_INPUT, rows)
            values: dict[str, object] = {
                "num_inputs": sa.select(sa.func.count())
                .select_from(schema.inputs)
                .where(schema.inputs.c.call_id == call_id)
                .scalar_subquery()
            }
            if complete:
                values["inputs_complete"] = True
            if rows:
                # A call the expiry loop saw with nothing left to run has work again.
                values["finished_at"] = None
                values["expires_at"] = None
            await conn.execute(
                schema.calls.update().where(schema.calls.c.id == call_id).values(**values)
            )
        return [QueuedInput(row["id"], function_id, now) for row in rows]

    async def get_call(self, call_id: str) -> Call:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(sa.select(schema.calls).where(schema.calls.c.id == call_id))
            ).one_or_none()
        if row is None:
            raise errors.NotFoundError(
                f"function call {call_id!r} not found: there is no such call, or it finished"
                " longer ago than the control plane keeps results (EMBER_OUTPUT_RETENTION_S)"
            )
        return Call(
            row.id, row.function_id, row.kind, row.num_inputs, row.inputs_complete, row.cancelled
        )

    async def outputs_after(self, call_id: str, after_seq: int, limit: int) -> list[StoredOutput]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                _OUTPUTS_AFTER, {"call_id": call_id, "after_seq": after_seq, "limit": limit}
            )
            return [StoredOutput(*row) for row in rows]

    async def lease(
        self, input_ids: Sequence[str], container_id: str, lease_expires_at: float
    ) -> list[LeasedInput]:
        """Lease the given queued inputs to a container; inputs no longer queued are skipped."""
        async with self._engine.begin() as conn:
            rows = await conn.execute(
                _LEASE,
                {
                    "ids": list(input_ids),
                    "to_container": container_id,
                    "expires_at": lease_expires_at,
                },
            )
            leased = {row.id: LeasedInput(*row) for row in rows}
        # Hand them out in the order asked for (the queue's order).
        return [leased[value] for value in input_ids if value in leased]

    async def renew_leases(self, container_ids: Sequence[str], lease_expires_at: float) -> None:
        if not container_ids:
            return
        async with self._engine.begin() as conn:
            await conn.execute(
                _RENEW, {"containers": list(container_ids), "expires_at": lease_expires_at}
            )

    async def record_results(self, results: Sequence[FinalResult]) -> dict[str, list[StoredOutput]]:
        """Store outputs and finish their inputs; returns the outputs stored now (a result
        reported before is not among them), by call."""
        if not results:
            return {}
        rows = []
        for item in results:
            call_id, idx = parse_input_id(item.input_id)
            rows.append(
                {
                    "call_id": call_id,
                    "input_id": item.input_id,
                    "idx": idx,
                    "gen_index": item.gen_index,
                    "result": item.result,
                    "result_blob_id": result_blob_id(item.result),
                }
            )
        finished = [item.input_id for item in results if item.finishes_input]
        async with self._engine.begin() as conn:
            for row in rows:
                if row["gen_index"] == AFTER_LAST_ITEM:
                    row["gen_index"] = (
                        await conn.execute(_NEXT_GEN_INDEX, {"input_id": row["input_id"]})
                    ).scalar_one()
            stored = await conn.run(_STORE_OUTPUT, rows)
            if finished:
                await conn.run(_FINISH_INPUT, [{"input_id": value} for value in finished])
        by_call: dict[str, list[StoredOutput]] = {}
        for seq, call_id, idx, gen_index, result in stored.rows:
            by_call.setdefault(call_id, []).append(StoredOutput(seq, idx, gen_index, result))
        return by_call

    async def requeue(
        self, input_ids: Iterable[str], available_at: float, undo_attempt: bool
    ) -> None:
        """Put leased inputs back in the queue (`undo_attempt` when they never started)."""
        ids = list(input_ids)
        if not ids:
            return
        i = schema.inputs.c
        values: dict[str, object] = {
            "state": schema.QUEUED,
            "container_id": None,
            "lease_expires_at": None,
            "available_at": available_at,
        }
        if undo_attempt:
            values["attempts"] = i.attempts - 1
        async with self._engine.begin() as conn:
            await conn.execute(
                schema.inputs.update()
                .where(i.id.in_(ids), _in_state(schema.LEASED))
                .values(**values)
            )

    async def requeue_lost(
        self, input_ids: Iterable[str], available_at: float, max_losses: int
    ) -> tuple[dict[str, int], list[str]]:
        """Put leased inputs whose host failed under them back in the queue, their attempt not
        counted and one more host loss noted, while they have been lost fewer than `max_losses`
        times. Returns the requeued inputs with their losses so far, and those left leased
        because they reached the bound (the caller fails them)."""
        ids = list(input_ids)
        if not ids:
            return {}, []
        i = schema.inputs.c
        async with self._engine.begin() as conn:
            rows = await conn.execute(
                schema.inputs.update()
                .where(i.id.in_(ids), _in_state(schema.LEASED), i.host_losses < max_losses)
                .values(
                    state=schema.QUEUED,
                    container_id=None,
                    lease_expires_at=None,
                    available_at=available_at,
                    attempts=i.attempts - 1,
                    host_losses=i.host_losses + 1,
                )
                .returning(i.id, i.host_losses)
            )
            requeued = {input_id: losses for input_id, losses in rows}
            exhausted = await conn.execute(
                sa.select(i.id).where(
                    i.id.in_([x for x in ids if x not in requeued]), _in_state(schema.LEASED)
                )
            )
            return requeued, list(exhausted.scalars())

    async def queued(self) -> list[QueuedInput]:
        """Every queued input, oldest first: the dispatcher's queues are rebuilt from this."""
        i = schema.inputs.c
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(i.id, i.function_id, i.available_at)
                .where(i.state == schema.QUEUED)
                .order_by(i.available_at, i.call_id, i.idx)
            )
            return [QueuedInput(*row) for row in rows]

    async def leased(
        self, *, container_ids: Sequence[str] | None = None, expired_before: float | None = None
    ) -> list[LeasedInput]:
        """Leased inputs held by these containers, or whose lease ran out before a time."""
        i = schema.inputs.c
        query = sa.select(
            i.id, i.function_id, i.idx, i.args, i.args_blob_id, i.attempts, i.container_id
        ).where(i.state == schema.LEASED)
        if container_ids is not None:
            query = query.where(i.container_id.in_(container_ids)).order_by(i.call_id, i.idx)
        if expired_before is not None:
            query = query.where(i.lease_expires_at < expired_before)
        async with self._engine.connect() as conn:
            return [LeasedInput(*row) for row in await conn.execute(query)]

    async def cancel(self, call_id: str) -> list[LeasedInput]:
        """Cancel a call's unfinished inputs; returns them (`container_id` set where running)."""
        i = schema.inputs.c
        async with self._engine.begin() as conn:
            await conn.execute(
                schema.calls.update().where(schema.calls.c.id == call_id).values(cancelled=True)
            )
            rows = await conn.execute(
                schema.inputs.update()
                .where(i.call_id == call_id, i.state.in_([schema.QUEUED, schema.LEASED]))
                .values(state=schema.CANCELLED, args=None)
                .returning(
                    i.id, i.function_id, i.idx, i.args, i.args_blob_id, i.attempts, i.container_id
                )
            )
            return [LeasedInput(*row) for row in rows]

    async def cancel_function_inputs(self, function_ids: Sequence[str]) -> list[str]:
        """Drop the queued inputs of functions whose app stopped; returns their ids."""
        i = schema.inputs.c
        async with self._engine.begin() as conn:
            rows = await conn.execute(
                schema.inputs.update()
                .where(i.function_id.in_(function_ids), i.state == schema.QUEUED)
                .values(state=schema.CANCELLED, args=None)
                .returning(i.id)
            )
            return list(rows.scalars())
