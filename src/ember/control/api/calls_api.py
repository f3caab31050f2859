"""The `Ember` service's functions and calls: look up, call, put inputs, get outputs, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ember import errors
from ember.control.api.errors import status_code, translate_errors
from ember.control.api.service import Context, PlaneService
from ember.control.scheduler.cluster import FunctionInfo
from ember.control.store import NewInput, StoredOutput
from ember.proto import api_pb2

# A long-poll for outputs answers after this long, saying why, when the call's inputs wait for a
# container that cannot be placed: its caller learns within seconds, not at the poll's end.
WAITING_NOTICE_S = 3.0


def new_inputs(inputs: list[api_pb2.Input]) -> list[NewInput]:
    return [
        NewInput(
            item.idx,
            item.args.data if item.args.WhichOneof("value") == "data" else None,
            item.args.blob_id or None,
        )
        for item in inputs
    ]


def output_messages(outputs: list[StoredOutput]) -> list[api_pb2.Output]:
    return [
        api_pb2.Output(
            seq=o.seq, idx=o.idx, gen_index=o.gen_index, result=api_pb2.Result.FromString(o.result)
        )
        for o in outputs
    ]


class CallsApi(PlaneService):
    @translate_errors
    async def FunctionGet(
        self, request: api_pb2.FunctionGetRequest, context: Context
    ) -> api_pb2.FunctionGetResponse:
        function = await self._plane.store.apps.find_function(
            request.app_name, request.function_name
        )
        return api_pb2.FunctionGetResponse(
            function_id=function.function_id, is_generator=function.definition.is_generator
        )

    async def _callable(self, function_id: str) -> FunctionInfo:
        info = await self._plane.load_function(function_id)
        if info.app_id not in self._plane.cluster.live_apps:
            raise errors.InvalidError(
                f"function {info.definition.name!r} belongs to an app that is no longer running;"
                " run it again with `ember run`, or deploy it with `ember deploy`"
            )
        return info

    @translate_errors
    async def FunctionCall(
        self, request: api_pb2.FunctionCallRequest, context: Context
    ) -> api_pb2.FunctionCallResponse:
        return await self._function_call(request)

    async def FunctionCalls(
        self, requests: AsyncIterator[api_pb2.FunctionCallRequest], context: Context
    ) -> None:
        """The calls of one client on one stream: each request is answered on its own, when
        ready; a failure answers its request alone and leaves the stream open. (Each answer is
        written by the task that made it, one at a time: through a queue it took a loop turn
        more.)"""
        writing = asyncio.Lock()

        async def answer(request: api_pb2.FunctionCallRequest) -> None:
            try:
                response = await self._function_call(request)
            except errors.Error as error:
                response = api_pb2.FunctionCallResponse(
                    error_code=status_code(error).name, error_message=str(error)
                )
            response.call_id = request.call_id
            async with writing:
                await context.write(response)

        async with asyncio.TaskGroup() as group:
            async for request in requests:
                group.create_task(answer(request))

    async def _function_call(
        self, request: api_pb2.FunctionCallRequest
    ) -> api_pb2.FunctionCallResponse:
        await self._callable(request.function_id)
        new = await self._plane.dispatcher.create_call(
            request.call_id,
            request.function_id,
            request.kind,
            new_inputs(list(request.inputs)),
            request.inputs_complete,
        )
        outputs, waiting = [], ""
        if request.wait_s > 0:
            outputs, waiting = await self._outputs_or_waiting(
                request.call_id,
                request.function_id,
                0,
                request.wait_s,
                known_empty=new > 0 and new == len(request.inputs),
            )
        return api_pb2.FunctionCallResponse(outputs=output_messages(outputs), waiting=waiting)

    async def _outputs_or_waiting(
        self,
        call_id: str,
        function_id: str,
        after_seq: int,
        wait_s: float,
        limit: int = 1000,
        *,
        known_empty: bool = False,
    ) -> tuple[list[StoredOutput], str]:
        """A call's outputs after `after_seq`, waiting up to `wait_s` for the first; but when
        none came within WAITING_NOTICE_S and its inputs wait for a container that cannot be
        placed (no worker connected, none with room), the answer comes then, saying why, so
        that the caller is told."""
        dispatcher = self._plane.dispatcher
        first = min(wait_s, WAITING_NOTICE_S)
        outputs = await dispatcher.wait_outputs(
            call_id, after_seq, first, limit, known_empty=known_empty
        )
        if outputs:
            return outputs, ""
        waiting = self._plane.scheduler.waiting_reason(function_id)
        if waiting or wait_s <= first:
            return [], waiting
        # No await since the first wait ended: nothing was stored in between.
        outputs = await dispatcher.wait_outputs(
            call_id, after_seq, wait_s - first, limit, known_empty=True
        )
        return outputs, "" if outputs else self._plane.scheduler.waiting_reason(function_id)

    @translate_errors
    async def FunctionPutInputs(
        self, request: api_pb2.FunctionPutInputsRequest, context: Context
    ) -> api_pb2.FunctionPutInputsResponse:
        call = await self._plane.store.calls.get_call(request.call_id)
        if call.cancelled:
            raise errors.InputCancelledError(f"function call {call.call_id} was cancelled")
        await self._callable(call.function_id)
        queued = await self._plane.store.calls.put_inputs(
            call.call_id,
            call.function_id,
            new_inputs(list(request.inputs)),
            request.inputs_complete,
            self._plane.clock.now(),
        )
        self._plane.dispatcher.enqueue(queued)
        return api_pb2.FunctionPutInputsResponse()

    @translate_errors
    async def FunctionGetOutputs(
        self, request: api_pb2.FunctionGetOutputsRequest, context: Context
    ) -> api_pb2.FunctionGetOutputsResponse:
        call = await self._plane.store.calls.get_call(request.call_id)
        outputs, waiting = await self._outputs_or_waiting(
            request.call_id,
            call.function_id,
            request.after_seq,
            request.wait_s,
            request.max_outputs or 1000,
        )
        if outputs:  # the input count may have grown while we waited
            call = await self._plane.store.calls.get_call(request.call_id)
        return api_pb2.FunctionGetOutputsResponse(
            outputs=output_messages(outputs),
            num_inputs=call.num_inputs,
            inputs_complete=call.inputs_complete,
            waiting=waiting,
        )

    @translate_errors
    async def FunctionCallCancel(
        self, request: api_pb2.FunctionCallCancelRequest, context: Context
    ) -> api_pb2.FunctionCallCancelResponse:
        await self._plane.store.calls.get_call(request.call_id)
        for container_id in await self._plane.dispatcher.cancel(request.call_id):
            await self._plane.scheduler.stop_container(container_id, "its input was cancelled")
        return api_pb2.FunctionCallCancelResponse()
