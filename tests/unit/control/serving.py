"""The control plane's two gRPC services, served in the test's process on a free port."""

import contextlib
from collections.abc import AsyncIterator

import grpc

from ember.client import Connection
from ember.control.api.ember_api import EmberService
from ember.control.api.workers_api import WorkersService
from ember.control.server import GRPC_OPTIONS, ControlPlane
from ember.proto import api_pb2, api_pb2_grpc


@contextlib.asynccontextmanager
async def serving(plane: ControlPlane) -> AsyncIterator[Connection]:
    """A connection to `plane`, served as `ember server` serves it."""
    server = grpc.aio.server(options=GRPC_OPTIONS)
    api_pb2_grpc.add_EmberServicer_to_server(EmberService(plane), server)
    api_pb2_grpc.add_WorkersServicer_to_server(WorkersService(plane), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    conn = Connection(f"127.0.0.1:{port}")
    try:
        yield conn
    finally:
        await conn.close()
        await server.stop(None)


async def start_container(plane: ControlPlane, conn: Connection) -> tuple[str, str]:
    """Register a worker, let the scheduler place a container for the queued input, and read the
    start order from the worker's order stream; the worker id and the container id."""
    registered = await conn.call(
        conn.workers.WorkerRegister,
        api_pb2.WorkerRegisterRequest(
            hostname="host-a", capacity=api_pb2.Resources(cpu=4.0, memory_mb=4096)
        ),
    )
    orders = conn.workers.WorkerOrders(api_pb2.WorkerOrdersRequest(worker_id=registered.worker_id))
    try:
        await plane.scheduler.tick()
        order = await orders.read()
    finally:
        orders.cancel()
    assert order.WhichOneof("order") == "start"
    return registered.worker_id, order.start.container_id
