"""Expiry in the running control plane (in process, over gRPC, on a fake clock): what callers and
a restart read is still there, and what expired is gone."""

import pickle
from collections.abc import AsyncIterator

import pytest

import ember
from ember.client import Connection
from ember.control.clock import FakeClock
from ember.control.expiry import DELIVERED_GRACE_S
from ember.control.server import ControlPlane
from ember.proto import api_pb2
from tests.unit.control.serving import serving, start_container

SPAWNED = "fc-" + "5" * 16
MAPPED = "fc-" + "6" * 16
RETENTION_S = 3600.0


SQUARE = api_pb2.FunctionDefinition(
    name="square",
    module="hello",
    qualname="square",
    resources=api_pb2.Resources(cpu=1.0, memory_mb=256),
)


async def start_app(conn: Connection) -> tuple[str, str]:
    """A running ephemeral app with the function `square`: its app id and function id."""
    created = await conn.call(conn.ember.AppCreate, api_pb2.AppCreateRequest(name="hello"))
    published = await conn.call(
        conn.ember.AppPublish,
        api_pb2.AppPublishRequest(app_id=created.app_id, functions=[SQUARE]),
    )
    return created.app_id, published.function_ids["square"]


async def exchange(
    conn: Connection, request: api_pb2.ContainerExchangeRequest
) -> api_pb2.ContainerExchangeResponse:
    """One exchange on a container's stream, as a worker makes it."""
    stream = conn.workers.ContainerExchange()
    await stream.write(request)
    response = await stream.read()
    stream.cancel()
    return response


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def plane(tmp_path, clock, monkeypatch) -> AsyncIterator[ControlPlane]:
    monkeypatch.setenv("EMBER_OUTPUT_RETENTION_S", str(RETENTION_S))
    opened = await ControlPlane.open(tmp_path / "control", clock=clock)
    yield opened
    await opened.close()


@pytest.fixture
async def conn(plane) -> AsyncIterator[Connection]:
    async with serving(plane) as connection:
        yield connection


async def submit(
    conn: Connection, function_id: str, call_id: str, kind: int, inputs: int = 1
) -> None:
    await conn.call(
        conn.ember.FunctionCall,
        api_pb2.FunctionCallRequest(
            call_id=call_id,
            function_id=function_id,
            kind=kind,
            inputs=[
                api_pb2.Input(idx=i, args=api_pb2.Payload(data=pickle.dumps(((7 + i,), {}))))
                for i in range(inputs)
            ],
            inputs_complete=True,
        ),
    )


async def run_inputs(conn: Connection, container_id: str, count: int) -> None:
    """The container runs `count` inputs, one at a time, reporting each one's square, as a
    worker does."""
    for _ in range(count):
        taken = await exchange(
            conn, api_pb2.ContainerExchangeRequest(container_id=container_id, want_inputs=1)
        )
        [item] = taken.inputs
        (x,), _ = pickle.loads(item.args.data)
        value = api_pb2.Payload(data=pickle.dumps(x * x))
        result = api_pb2.Result(status=api_pb2.RESULT_STATUS_SUCCESS, data=value)
        await exchange(
            conn,
            api_pb2.ContainerExchangeRequest(
                container_id=container_id,
                results=[api_pb2.InputResult(input_id=item.input_id, result=result)],
            ),
        )


async def outputs(conn: Connection, call_id: str) -> list[api_pb2.Output]:
    response = await conn.call(
        conn.ember.FunctionGetOutputs, api_pb2.FunctionGetOutputsRequest(call_id=call_id)
    )
    return list(response.outputs)


async def test_a_spawned_result_is_read_by_from_id_through_its_retention_and_then_expires(
    plane, conn, clock
) -> None:
    app_id, function_id = await start_app(conn)
    await submit(conn, function_id, SPAWNED, api_pb2.CALL_KIND_SPAWN, inputs=1)
    _, container_id = await start_container(plane, conn)
    await run_inputs(conn, container_id, 1)
    await plane.expiry.run_once()
    await conn.call(conn.ember.AppStop, api_pb2.AppStopRequest(app_id=app_id))
    clock.advance(RETENTION_S - 60)
    await plane.expiry.run_once()

    # What `FunctionCall.from_id(id).get()` does, on this connection.
    assert await ember.FunctionCall.from_id(SPAWNED)._result(conn, timeout=1.0) == 49

    clock.advance(120)
    assert (await plane.expiry.run_once()).calls_deleted == 1
    with pytest.raises(ember.NotFoundError, match="EMBER_OUTPUT_RETENTION_S"):
        await ember.FunctionCall.from_id(SPAWNED)._result(conn, timeout=1.0)


async def test_a_live_maps_outputs_stay_however_long_it_runs(plane, conn, clock) -> None:
    _, function_id = await start_app(conn)
    await submit(conn, function_id, MAPPED, api_pb2.CALL_KIND_MAP, inputs=3)
    _, container_id = await start_container(plane, conn)
    await run_inputs(conn, container_id, 1)
    for _ in range(3):
        clock.advance(RETENTION_S)
        await plane.expiry.run_once()
    assert [pickle.loads(o.result.data.data) for o in await outputs(conn, MAPPED)] == [49]


async def test_a_finished_map_of_a_stopped_app_is_gone_after_the_grace(plane, conn, clock) -> None:
    app_id, function_id = await start_app(conn)
    await submit(conn, function_id, MAPPED, api_pb2.CALL_KIND_MAP, inputs=3)
    _, container_id = await start_container(plane, conn)
    await run_inputs(conn, container_id, 3)
    assert len(await outputs(conn, MAPPED)) == 3
    await conn.call(conn.ember.AppStop, api_pb2.AppStopRequest(app_id=app_id))
    await plane.expiry.run_once()
    clock.advance(DELIVERED_GRACE_S - 1)
    await plane.expiry.run_once()
    assert len(await outputs(conn, MAPPED)) == 3  # a reader repeating its last request
    clock.advance(2)
    await plane.expiry.run_once()
    with pytest.raises(ember.NotFoundError):
        await outputs(conn, MAPPED)


async def test_a_restart_after_expiry_restores_the_live_calls(tmp_path, clock, monkeypatch) -> None:
    monkeypatch.setenv("EMBER_OUTPUT_RETENTION_S", str(RETENTION_S))
    data_dir = tmp_path / "control"
    first = await ControlPlane.open(data_dir, clock=clock)
    async with serving(first) as conn:
        _, function_id = await start_app(conn)
        await submit(conn, function_id, SPAWNED, api_pb2.CALL_KIND_SPAWN)
        _, container_id = await start_container(first, conn)
        await run_inputs(conn, container_id, 1)
        await submit(conn, function_id, MAPPED, api_pb2.CALL_KIND_MAP, inputs=2)  # queued
        await first.expiry.run_once()
        clock.advance(RETENTION_S + 1)
        assert (await first.expiry.run_once()).calls_deleted == 1
    await first.close()

    second = await ControlPlane.open(data_dir, clock=clock)
    try:
        assert second.dispatcher.queued(function_id) == 2
        assert {q.input_id.split("-")[1] for q in await second.store.calls.queued()} == {"6" * 16}
        assert second.cluster.definition(function_id).name == SQUARE.name
    finally:
        await second.close()
