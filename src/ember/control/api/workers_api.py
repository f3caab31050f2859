"""The `Workers` service, called by worker agents on behalf of their hosts and containers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from ember import errors
from ember.control.api.errors import translate_errors
from ember.control.ids import new_id
from ember.control.store import LogLine, schema
from ember.proto import api_pb2, api_pb2_grpc

if TYPE_CHECKING:
    from ember.control.server import ControlPlane

Context = grpc.aio.ServicerContext


class WorkersService(api_pb2_grpc.WorkersServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane

    @translate_errors
    async def WorkerRegister(
        self, request: api_pb2.WorkerRegisterRequest, context: Context
    ) -> api_pb2.WorkerRegisterResponse:
        worker_id = request.worker_id or new_id("wk")
        await self._plane.scheduler.register_worker(
            worker_id,
            request.hostname,
            request.capacity.cpu,
            int(request.capacity.memory_mb),
            started=request.started,
        )
        return api_pb2.WorkerRegisterResponse(
            worker_id=worker_id, image_store_url=self._plane.chunks.url
        )

    @translate_errors
    async def WorkerOrders(
        self, request: api_pb2.WorkerOrdersRequest, context: Context
    ) -> AsyncIterator[api_pb2.WorkerOrder]:
        worker = self._plane.cluster.workers.get(request.worker_id)
        if worker is None:
            raise errors.NotFoundError(f"worker {request.worker_id!r} is not registered")
        orders = self._plane.cluster.orders(request.worker_id)
        while True:
            yield await orders.get()

    @translate_errors
    async def WorkerHeartbeat(
        self, request: api_pb2.WorkerHeartbeatRequest, context: Context
    ) -> api_pb2.WorkerHeartbeatResponse:
        if request.worker_id not in self._plane.cluster.workers:
            raise errors.NotFoundError(f"worker {request.worker_id!r} is not registered")
        await self._plane.scheduler.worker_heartbeat(request.worker_id, list(request.container_ids))
        return api_pb2.WorkerHeartbeatResponse()

    @translate_errors
    async def ContainerExchange(
        self, requests: AsyncIterator[api_pb2.ContainerExchangeRequest], context: Context
    ) -> AsyncIterator[api_pb2.ContainerExchangeResponse]:
        """A container's stream: each request reports results and asks for inputs; each gets
        one response. (A stream: its messages cost less than a call each.)"""
        async for request in requests:
            yield await self._exchange(request)

    async def _exchange(
        self, request: api_pb2.ContainerExchangeRequest
    ) -> api_pb2.ContainerExchangeResponse:
        plane = self._plane
        await plane.dispatcher.report(request.container_id, list(request.results))
        container = plane.cluster.containers.get(request.container_id)
        if container is None or container.state == schema.STOPPING:
            return api_pb2.ContainerExchangeResponse(stop=True)
        if container.state == schema.STARTING:
            await plane.scheduler.container_running(container.container_id)
        leased = await plane.dispatcher.take(
            container.function_id, container.container_id, request.want_inputs, request.wait_s
        )
        return api_pb2.ContainerExchangeResponse(
            inputs=[
                api_pb2.Input(
                    input_id=item.input_id,
                    idx=item.idx,
                    args=api_pb2.Payload(blob_id=item.args_blob_id)
                    if item.args_blob_id
                    else api_pb2.Payload(data=item.args or b""),
                )
                for item in leased
            ],
            stop=container.state == schema.STOPPING,
        )

    @translate_errors
    async def ContainerExited(
        self, request: api_pb2.ContainerExitedRequest, context: Context
    ) -> api_pb2.ContainerExitedResponse:
        await self._plane.scheduler.container_exited(
            request.container_id, request.reason, request.message, list(request.inflight_input_ids)
        )
        return api_pb2.ContainerExitedResponse()

    @translate_errors
    async def LogsPut(
        self, request: api_pb2.LogsPutRequest, context: Context
    ) -> api_pb2.LogsPutResponse:
        await self._plane.logs.append(
            [
                LogLine(0, e.app_id, e.function_name, e.container_id, e.fd, e.data, e.timestamp)
                for e in request.entries
            ]
        )
        return api_pb2.LogsPutResponse()

    @translate_errors
    async def BuildReport(
        self, request: api_pb2.BuildReportRequest, context: Context
    ) -> api_pb2.BuildReportResponse:
        self._plane.images.report(request)
        return api_pb2.BuildReportResponse()
