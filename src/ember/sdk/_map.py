"""Fan-out: `Function.map` as one call with many inputs, streamed both ways.

A feeder task pulls arguments from the caller's iterables lazily, sends them in batches (the
first batch creates the call) and stops reading while `MAX_PENDING` inputs await results, so a
map of 100,000 inputs never holds them all. The reader long-polls outputs after the last sequence
number it saw and yields results as they finish (or in input order). Every request can be
repeated safely, so both survive a control plane restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

from ember.client import Connection
from ember.proto import api_pb2
from ember.sdk._calls import decode_error, decode_result, encode_args, is_error, new_call_id
from ember.sdk.output import note_waiting

BATCH_INPUTS = 1000
BATCH_BYTES = 8 << 20
MAX_PENDING = 10_000
POLL_S = 5.0


class _Feeder:
    def __init__(
        self,
        conn: Connection,
        call_id: str,
        function_id: str,
        arguments: Iterable[tuple[tuple[Any, ...], dict[str, Any]]],
    ) -> None:
        self.conn = conn
        self.call_id = call_id
        self.function_id = function_id
        self.arguments = arguments
        self.sent = 0
        self.total: int | None = None  # known once the iterables are exhausted
        self.handed_out = 0  # results the caller has received
        self.room = asyncio.Event()  # set when a result handed out makes room for an input

    async def run(self) -> None:
        created = False
        batch: list[api_pb2.Input] = []
        size = 0
        iterator = iter(self.arguments)
        while True:
            while self.sent + len(batch) - self.handed_out >= MAX_PENDING:
                self.room.clear()
                await self.room.wait()
            item = next(iterator, None)
            if item is not None:
                payload = await encode_args(self.conn, *item)
                batch.append(api_pb2.Input(idx=self.sent + len(batch), args=payload))
                size += payload.ByteSize()
                if len(batch) < BATCH_INPUTS and size < BATCH_BYTES:
                    continue
            complete = item is None
            if not created:
                await self.conn.call(
                    self.conn.ember.FunctionCall,
                    api_pb2.FunctionCallRequest(
                        call_id=self.call_id,
                        function_id=self.function_id,
                        kind=api_pb2.CALL_KIND_MAP,
                        inputs=batch,
                        inputs_complete=complete,
                    ),
                )
                created = True
            elif batch or complete:
                await self.conn.call(
                    self.conn.ember.FunctionPutInputs,
                    api_pb2.FunctionPutInputsRequest(
                        call_id=self.call_id, inputs=batch, inputs_complete=complete
                    ),
                )
            self.sent += len(batch)
            batch, size = [], 0
            if complete:
                self.total = self.sent
                return

    def hand_out(self) -> None:
        """A result goes to the caller: an input may take its place. (Counted when handed out,
        not when it arrives: results held back to keep the order count as pending too.)"""
        self.handed_out += 1
        self.room.set()


async def map_outputs(
    conn: Connection,
    function_id: str,
    arguments: Iterable[tuple[tuple[Any, ...], dict[str, Any]]],
    *,
    order_outputs: bool,
    return_exceptions: bool,
) -> AsyncIterator[Any]:
    """Results of running the function over `arguments`, as they finish or in order."""
    call_id = new_call_id()
    feeder = _Feeder(conn, call_id, function_id, arguments)
    feed = asyncio.create_task(feeder.run())
    after_seq = 0
    waiting: dict[int, Any] = {}  # finished out of order, held until their turn
    next_idx = 0
    seen: set[int] = set()
    finished = False
    try:
        while feeder.total is None or len(seen) < feeder.total:
            if feed.done() and feed.exception() is not None:
                raise feed.exception()  # type: ignore[misc]
            if feeder.sent == 0:  # nothing sent yet: the call does not exist
                await asyncio.wait([feed], timeout=0.01)
                continue
            response = await conn.call(
                conn.ember.FunctionGetOutputs,
                api_pb2.FunctionGetOutputsRequest(
                    call_id=call_id, after_seq=after_seq, wait_s=POLL_S
                ),
            )
            note_waiting(response.waiting)
            fresh = []
            for output in response.outputs:
                after_seq = max(after_seq, output.seq)
                if output.idx in seen:
                    continue
                seen.add(output.idx)
                fresh.append(output)
            for output in fresh:
                value = await _value(conn, output.result, return_exceptions)
                if not order_outputs:
                    feeder.hand_out()
                    yield value
                    continue
                waiting[output.idx] = value
                while next_idx in waiting:
                    feeder.hand_out()
                    yield waiting.pop(next_idx)
                    next_idx += 1
        finished = True
    finally:
        feed.cancel()
        if not finished and feeder.sent:
            # The caller stopped early or an input failed: drop what has not run.
            await conn.call(
                conn.ember.FunctionCallCancel, api_pb2.FunctionCallCancelRequest(call_id=call_id)
            )


async def _value(conn: Connection, result: api_pb2.Result, return_exceptions: bool) -> Any:
    if is_error(result) and return_exceptions:
        return await decode_error(conn, result)
    return await decode_result(conn, result)
