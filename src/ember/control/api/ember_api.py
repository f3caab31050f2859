"""The `Ember` service, called by the SDK and the CLI: decode, call the parts, encode."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from ember import errors
from ember.control.api.errors import status_code, translate_errors
from ember.control.scheduler.cluster import FunctionInfo
from ember.control.store import NewInput, StoredOutput
from ember.control.store.apps import LIVE_STATES
from ember.proto import api_pb2, api_pb2_grpc

# A long-poll for outputs answers after this long, saying why, when the call's inputs wait for a
# container that cannot be placed: its caller learns within seconds, not at the poll's end.
WAITING_NOTICE_S = 3.0

if TYPE_CHECKING:
    from ember.control.server import ControlPlane

Context = grpc.aio.ServicerContext


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


async def blob_chunks(requests: AsyncIterator[api_pb2.BlobChunk]) -> AsyncIterator[bytes]:
    async for chunk in requests:
        yield chunk.data


class EmberService(api_pb2_grpc.EmberServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane

    # ---- apps

    @translate_errors
    async def AppCreate(
        self, request: api_pb2.AppCreateRequest, context: Context
    ) -> api_pb2.AppCreateResponse:
        state = api_pb2.APP_STATE_DETACHED if request.detach else api_pb2.APP_STATE_EPHEMERAL
        app_id = await self._plane.store.apps.create(
            request.name, state, self._plane.clock.now(), request.client_key
        )
        self._plane.cluster.app_live(app_id)
        return api_pb2.AppCreateResponse(app_id=app_id)

    @translate_errors
    async def AppPublish(
        self, request: api_pb2.AppPublishRequest, context: Context
    ) -> api_pb2.AppPublishResponse:
        ids = await self._plane.store.apps.publish(
            request.app_id, request.source_blob_id, list(request.functions)
        )
        # What the store holds: a repeated publish keeps the definitions of the first.
        for function in await self._plane.store.apps.functions_of([request.app_id]):
            self._remember(function.function_id, request.app_id, function.definition)
        return api_pb2.AppPublishResponse(function_ids=ids)

    @translate_errors
    async def AppDeploy(
        self, request: api_pb2.AppDeployRequest, context: Context
    ) -> api_pb2.AppDeployResponse:
        app, ids, replaced = await self._plane.store.apps.deploy(
            request.name, request.source_blob_id, list(request.functions), self._plane.clock.now()
        )
        self._plane.cluster.app_live(app.app_id)
        for definition in request.functions:
            self._remember(ids[definition.name], app.app_id, definition)
        if replaced:
            await self._plane.scheduler.stop_apps(replaced)
        return api_pb2.AppDeployResponse(app_id=app.app_id, version=app.version, function_ids=ids)

    def _remember(
        self, function_id: str, app_id: str, definition: api_pb2.FunctionDefinition
    ) -> None:
        self._plane.cluster.remember_function(FunctionInfo(function_id, app_id, definition))
        if definition.autoscaling.min_containers > 0:
            self._plane.scheduler.poke()

    @translate_errors
    async def AppHeartbeat(
        self, request: api_pb2.AppHeartbeatRequest, context: Context
    ) -> api_pb2.AppHeartbeatResponse:
        await self._plane.store.apps.heartbeat([request.app_id], self._plane.clock.now())
        return api_pb2.AppHeartbeatResponse()

    @translate_errors
    async def AppStop(
        self, request: api_pb2.AppStopRequest, context: Context
    ) -> api_pb2.AppStopResponse:
        app = await self._plane.store.apps.named(request.app_id, request.name)
        await self._plane.scheduler.stop_apps([app.app_id])
        return api_pb2.AppStopResponse(app_id=app.app_id)

    @translate_errors
    async def AppList(
        self, request: api_pb2.AppListRequest, context: Context
    ) -> api_pb2.AppListResponse:
        apps = await self._plane.store.apps.list(request.include_stopped)
        containers: dict[str, int] = {}
        for container in self._plane.cluster.containers.values():
            containers[container.app_id] = containers.get(container.app_id, 0) + 1
        return api_pb2.AppListResponse(
            apps=[
                api_pb2.AppSummary(
                    app_id=app.app_id,
                    name=app.name,
                    state=app.state,
                    version=app.version,
                    created_at=app.created_at,
                    containers=containers.get(app.app_id, 0),
                )
                for app in apps
            ]
        )

    @translate_errors
    async def AppLogs(
        self, request: api_pb2.AppLogsRequest, context: Context
    ) -> AsyncIterator[api_pb2.LogEntry]:
        app = await self._plane.store.apps.named(request.app_id, request.name)
        # A stopped app writes no more lines: show what it wrote and end, rather than wait.
        follow = request.follow and app.state in LIVE_STATES
        async for line in self._plane.logs.read(app.app_id, request.after_id, follow):
            yield api_pb2.LogEntry(
                app_id=line.app_id,
                function_name=line.function_name,
                container_id=line.container_id,
                fd=line.fd,
                data=line.data,
                timestamp=line.timestamp,
                log_id=line.log_id,
            )

    # ---- functions and calls

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

    # ---- blobs and cluster

    @translate_errors
    async def BlobPut(
        self, request_iterator: AsyncIterator[api_pb2.BlobChunk], context: Context
    ) -> api_pb2.BlobPutResponse:
        blob_id = await self._plane.blobs.put(blob_chunks(request_iterator))
        return api_pb2.BlobPutResponse(blob_id=blob_id)

    @translate_errors
    async def BlobGet(
        self, request: api_pb2.BlobGetRequest, context: Context
    ) -> AsyncIterator[api_pb2.BlobChunk]:
        async for chunk in self._plane.blobs.get(request.blob_id):
            yield api_pb2.BlobChunk(data=chunk)

    @translate_errors
    async def ClusterStatus(
        self, request: api_pb2.ClusterStatusRequest, context: Context
    ) -> api_pb2.ClusterStatusResponse:
        cluster = self._plane.cluster
        summaries = []
        for worker in cluster.workers.values():
            placed = cluster.containers_on(worker.worker_id)
            summaries.append(
                api_pb2.WorkerSummary(
                    worker_id=worker.worker_id,
                    hostname=worker.hostname,
                    capacity=api_pb2.Resources(cpu=worker.cpu, memory_mb=worker.memory_mb),
                    used=api_pb2.Resources(
                        cpu=sum(c.cpu for c in placed), memory_mb=sum(c.memory_mb for c in placed)
                    ),
                    containers=len(placed),
                    last_heartbeat=worker.last_heartbeat_at,
                )
            )
        return api_pb2.ClusterStatusResponse(workers=summaries)

    # ---- images

    @translate_errors
    async def ImageBuild(
        self, request: api_pb2.ImageBuildRequest, context: Context
    ) -> AsyncIterator[api_pb2.ImageBuildEvent]:
        async for event in self._plane.images.build(list(request.steps)):
            yield event

    @translate_errors
    async def ImageList(
        self, request: api_pb2.ImageListRequest, context: Context
    ) -> api_pb2.ImageListResponse:
        records = await self._plane.store.images.list()
        return api_pb2.ImageListResponse(
            images=[
                api_pb2.ImageInfo(
                    image_id=r.image_id,
                    parent_id=r.parent_id,
                    step=r.step,
                    size_bytes=r.size_bytes,
                    files=r.files,
                    created_at=r.created_at,
                )
                for r in records
            ]
        )

    @translate_errors
    async def ImageGet(
        self, request: api_pb2.ImageGetRequest, context: Context
    ) -> api_pb2.ImageGetResponse:
        store = self._plane.store.images
        record = await store.get(request.image_id)
        if record is None:
            raise errors.NotFoundError(f"image {request.image_id!r} not found")
        steps, ancestor = [], record
        while ancestor is not None:
            steps.insert(0, ancestor.step)
            ancestor = await store.get(ancestor.parent_id) if ancestor.parent_id else None
        info = await self._plane.images.info(record)
        return api_pb2.ImageGetResponse(image=info, steps=steps)

    @translate_errors
    async def ImageDelete(
        self, request: api_pb2.ImageDeleteRequest, context: Context
    ) -> api_pb2.ImageDeleteResponse:
        cluster = self._plane.cluster
        in_use = {
            info.definition.image_id
            for info in cluster.functions.values()
            if info.app_id in cluster.live_apps
        }
        removed = await self._plane.images.delete(request.image_id, in_use)
        return api_pb2.ImageDeleteResponse(chunks_removed=removed)
