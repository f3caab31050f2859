"""The control plane in process, served over gRPC on a local port and driven through the client."""

import asyncio
import pickle

import grpc
import pytest

import ember
from ember.client import Connection
from ember.control.api.ember_api import EmberService
from ember.control.clock import FakeClock
from ember.control.server import GRPC_OPTIONS, ControlPlane
from ember.proto import api_pb2, api_pb2_grpc
from tests.unit.control.serving import serving, start_container

CALL = "fc-" + "feedfacecafebeef"
SQUARE = api_pb2.FunctionDefinition(
    name="square",
    module="hello",
    qualname="square",
    resources=api_pb2.Resources(cpu=1.0, memory_mb=256),
    autoscaling=api_pb2.Autoscaling(scaledown_window_s=60.0),
)


async def exchange(
    conn: Connection, request: api_pb2.ContainerExchangeRequest
) -> api_pb2.ContainerExchangeResponse:
    """One exchange on a container's stream, as a worker makes it."""
    stream = conn.workers.ContainerExchange()
    await stream.write(request)
    response = await stream.read()
    stream.cancel()
    return response


async def start_app(conn: Connection, name: str = "hello") -> tuple[str, str]:
    """A running app with the function `square`; its app id and function id."""
    created = await conn.call(conn.ember.AppCreate, api_pb2.AppCreateRequest(name=name))
    published = await conn.call(
        conn.ember.AppPublish,
        api_pb2.AppPublishRequest(app_id=created.app_id, functions=[SQUARE]),
    )
    return created.app_id, published.function_ids["square"]


async def call(conn: Connection, function_id: str, call_id: str = CALL) -> None:
    args = api_pb2.Payload(data=pickle.dumps(((7,), {})))
    await conn.call(
        conn.ember.FunctionCall,
        api_pb2.FunctionCallRequest(
            call_id=call_id,
            function_id=function_id,
            kind=api_pb2.CALL_KIND_SPAWN,
            inputs=[api_pb2.Input(idx=0, args=args)],
            inputs_complete=True,
        ),
    )


async def test_a_call_is_queued_durably_across_a_restart(tmp_path) -> None:
    data_dir = tmp_path / "control"
    first = await ControlPlane.open(data_dir, clock=FakeClock())
    async with serving(first) as conn:
        _, function_id = await start_app(conn)
        await call(conn, function_id)
    await first.close()

    second = await ControlPlane.open(data_dir, clock=FakeClock())
    try:
        assert second.dispatcher.queued(function_id) == 1
        assert [q.function_id for q in await second.store.calls.queued()] == [function_id]
        assert second.cluster.definition(function_id).name == "square"
    finally:
        await second.close()


async def test_repeating_a_call_request_stores_its_input_once(plane, conn) -> None:
    _, function_id = await start_app(conn)
    await call(conn, function_id)
    await call(conn, function_id)
    assert plane.dispatcher.queued(function_id) == 1
    outputs = await conn.call(
        conn.ember.FunctionGetOutputs, api_pb2.FunctionGetOutputsRequest(call_id=CALL)
    )
    assert (outputs.num_inputs, outputs.inputs_complete) == (1, True)


async def test_function_get_finds_a_published_function(conn) -> None:
    _, function_id = await start_app(conn)
    found = await conn.call(
        conn.ember.FunctionGet,
        api_pb2.FunctionGetRequest(app_name="hello", function_name="square"),
    )
    assert (found.function_id, found.is_generator) == (function_id, False)


async def test_function_get_for_an_unknown_app_is_not_found_by_name(conn) -> None:
    request = api_pb2.FunctionGetRequest(app_name="no-such-app", function_name="square")
    with pytest.raises(ember.NotFoundError, match="no-such-app"):
        await conn.call(conn.ember.FunctionGet, request)


async def test_function_get_outputs_of_an_unknown_call_is_not_found(conn) -> None:
    request = api_pb2.FunctionGetOutputsRequest(call_id=CALL)
    with pytest.raises(ember.NotFoundError, match=CALL):
        await conn.call(conn.ember.FunctionGetOutputs, request)


async def test_calling_a_function_of_a_stopped_app_is_invalid(conn) -> None:
    app_id, function_id = await start_app(conn)
    await conn.call(conn.ember.AppStop, api_pb2.AppStopRequest(app_id=app_id))
    with pytest.raises(ember.InvalidError, match=r"'square'.*no longer running"):
        await call(conn, function_id)


async def test_stopping_an_app_by_name_hides_it_from_the_list(conn) -> None:
    app_id, _ = await start_app(conn)
    stopped = await conn.call(conn.ember.AppStop, api_pb2.AppStopRequest(name="hello"))
    assert stopped.app_id == app_id
    listed = await conn.call(conn.ember.AppList, api_pb2.AppListRequest())
    assert list(listed.apps) == []
    everything = await conn.call(conn.ember.AppList, api_pb2.AppListRequest(include_stopped=True))
    assert [(a.app_id, a.state) for a in everything.apps] == [(app_id, api_pb2.APP_STATE_STOPPED)]


async def test_deploying_again_makes_a_new_version_and_stops_the_old_one(conn) -> None:
    deploy = api_pb2.AppDeployRequest(name="svc", functions=[SQUARE])
    first = await conn.call(conn.ember.AppDeploy, deploy)
    second = await conn.call(conn.ember.AppDeploy, deploy)
    assert (first.version, second.version) == (1, 2)
    with pytest.raises(ember.InvalidError):
        await call(conn, first.function_ids["square"])
    found = await conn.call(
        conn.ember.FunctionGet, api_pb2.FunctionGetRequest(app_name="svc", function_name="square")
    )
    assert found.function_id == second.function_ids["square"]


async def test_blobs_round_trip_through_the_plane(conn) -> None:
    from ember.client.blobs import download, upload

    data = bytes(range(256)) * 10_000  # several chunks
    blob_id = await upload(conn, data)
    assert await download(conn, blob_id) == data
    with pytest.raises(ember.NotFoundError):
        await download(conn, "bl-" + "0" * 64)


async def test_a_container_leases_the_input_and_its_result_reaches_the_caller(plane, conn) -> None:
    _, function_id = await start_app(conn)
    await call(conn, function_id)
    _, container_id = await start_container(plane, conn)
    assert plane.cluster.containers[container_id].function_id == function_id

    exchanged = await exchange(
        conn,
        api_pb2.ContainerExchangeRequest(container_id=container_id, want_inputs=1),
    )
    [leased] = exchanged.inputs
    assert pickle.loads(leased.args.data) == ((7,), {})
    assert plane.dispatcher.holds(container_id) == {leased.input_id}

    result = api_pb2.Result(
        status=api_pb2.RESULT_STATUS_SUCCESS, data=api_pb2.Payload(data=pickle.dumps(49))
    )
    await exchange(
        conn,
        api_pb2.ContainerExchangeRequest(
            container_id=container_id,
            results=[api_pb2.InputResult(input_id=leased.input_id, result=result)],
        ),
    )
    response = await conn.call(
        conn.ember.FunctionGetOutputs,
        api_pb2.FunctionGetOutputsRequest(call_id=CALL, wait_s=5.0),
    )
    [output] = response.outputs
    assert (output.idx, output.result) == (0, result)


async def test_a_stopped_container_is_told_to_stop(plane, conn) -> None:
    _, function_id = await start_app(conn)
    await call(conn, function_id)
    _, container_id = await start_container(plane, conn)
    await plane.scheduler.stop_container(container_id, "test")
    exchanged = await exchange(
        conn,
        api_pb2.ContainerExchangeRequest(container_id=container_id, want_inputs=1),
    )
    assert exchanged.stop is True and list(exchanged.inputs) == []


async def test_a_container_cannot_report_results_for_inputs_it_does_not_hold(plane, conn) -> None:
    _, function_id = await start_app(conn)
    await call(conn, function_id)
    _, container_id = await start_container(plane, conn)
    exchanged = await exchange(
        conn,
        api_pb2.ContainerExchangeRequest(container_id=container_id, want_inputs=1),
    )
    [leased] = exchanged.inputs
    forged = api_pb2.Result(
        status=api_pb2.RESULT_STATUS_SUCCESS, data=api_pb2.Payload(data=pickle.dumps("forged"))
    )
    await exchange(
        conn,
        api_pb2.ContainerExchangeRequest(
            container_id="ta-0000000000000000",
            results=[api_pb2.InputResult(input_id=leased.input_id, result=forged)],
        ),
    )
    response = await conn.call(
        conn.ember.FunctionGetOutputs, api_pb2.FunctionGetOutputsRequest(call_id=CALL)
    )
    assert list(response.outputs) == []
    assert plane.dispatcher.holds(container_id) == {leased.input_id}


async def test_a_cancelled_call_starts_no_container(plane, conn) -> None:
    _, function_id = await start_app(conn)
    await call(conn, function_id)
    await conn.call(conn.ember.FunctionCallCancel, api_pb2.FunctionCallCancelRequest(call_id=CALL))
    await conn.call(
        conn.workers.WorkerRegister,
        api_pb2.WorkerRegisterRequest(
            hostname="host-a", capacity=api_pb2.Resources(cpu=4.0, memory_mb=4096)
        ),
    )
    await plane.scheduler.tick()
    assert plane.cluster.containers == {}


async def test_inputs_sent_to_a_cancelled_call_fail_as_cancelled_without_asking_again(
    plane, conn
) -> None:
    """ember's own CANCELLED is marked as its own, so the client does not take it for gRPC's
    (a server gone away) and repeat the request."""
    _, function_id = await start_app(conn)
    await call(conn, function_id)
    await conn.call(conn.ember.FunctionCallCancel, api_pb2.FunctionCallCancelRequest(call_id=CALL))
    args = api_pb2.Payload(data=pickle.dumps(((8,), {})))
    with pytest.raises(ember.InputCancelledError, match=f"function call {CALL} was cancelled"):
        await asyncio.wait_for(
            conn.call(
                conn.ember.FunctionPutInputs,
                api_pb2.FunctionPutInputsRequest(
                    call_id=CALL, inputs=[api_pb2.Input(idx=1, args=args)]
                ),
            ),
            10,
        )


async def test_calls_on_one_stream_are_answered_each_on_its_own(plane, conn) -> None:
    _, function_id = await start_app(conn)
    stopped_app, stopped_function = await start_app(conn, name="stopped")
    await conn.call(conn.ember.AppStop, api_pb2.AppStopRequest(app_id=stopped_app))

    def request(call_id: str, target: str, wait_s: float) -> api_pb2.FunctionCallRequest:
        return api_pb2.FunctionCallRequest(
            call_id=call_id,
            function_id=target,
            kind=api_pb2.CALL_KIND_REMOTE,
            inputs=[api_pb2.Input(idx=0, args=api_pb2.Payload(data=pickle.dumps(((3,), {}))))],
            inputs_complete=True,
            wait_s=wait_s,
        )

    waiting = asyncio.create_task(conn.calls.call(request("fc-" + "1" * 16, function_id, 5.0)))
    quick = await conn.calls.call(request("fc-" + "2" * 16, function_id, 0.0))
    assert quick.call_id == "fc-" + "2" * 16 and not waiting.done()  # answered out of order
    with pytest.raises(ember.InvalidError, match="no longer running"):
        await conn.calls.call(request("fc-" + "3" * 16, stopped_function, 0.0))
    assert not waiting.done()  # the failure answered its own call only
    waiting.cancel()


async def test_a_stopping_control_plane_answers_waiting_callers_as_unreachable(plane, conn) -> None:
    """What a shutdown does to requests that would wait: they are answered UNAVAILABLE at once
    (the caller asks again, of the next control plane), not left to wait out the server's
    grace."""
    _, function_id = await start_app(conn)
    await call(conn, function_id)  # no container: its output will not come
    plane.dispatcher.stop_waiting()
    with pytest.raises(ember.ConnectionError, match="the control plane is stopping"):
        await conn.call(
            conn.ember.FunctionGetOutputs,
            api_pb2.FunctionGetOutputsRequest(call_id=CALL, wait_s=30),
            retry=False,
        )
    request = api_pb2.FunctionCallRequest(
        call_id="fc-" + "ab" * 16,
        function_id=function_id,
        kind=api_pb2.CALL_KIND_REMOTE,
        inputs=[api_pb2.Input(idx=0, args=api_pb2.Payload(data=pickle.dumps(((7,), {}))))],
        inputs_complete=True,
        wait_s=30,
    )
    with pytest.raises(grpc.aio.AioRpcError) as answered:  # what `reconnecting` repeats
        await conn.calls._call_once(request)
    assert answered.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_calls_cut_off_by_a_stopping_server_are_asked_again_of_the_next(
    plane, monkeypatch
) -> None:
    """gRPC ends the calls a stopping server had not yet handed to a handler as CANCELLED, a
    status ember did not set (grpc/grpc#41785): the client must take that for the control plane
    going away and ask again, never for its call's cancellation."""
    handled = asyncio.Event()
    wait_outputs = plane.dispatcher.wait_outputs

    async def noting_a_handler(*args, **kwargs):
        handled.set()
        return await wait_outputs(*args, **kwargs)

    monkeypatch.setattr(plane.dispatcher, "wait_outputs", noting_a_handler)
    first = grpc.aio.server(options=GRPC_OPTIONS)
    api_pb2_grpc.add_EmberServicer_to_server(EmberService(plane), first)
    port = first.add_insecure_port("127.0.0.1:0")
    await first.start()
    conn = Connection(f"127.0.0.1:{port}")
    second = grpc.aio.server(options=GRPC_OPTIONS)
    try:
        _, function_id = await start_app(conn)
        await call(conn, function_id)
        request = api_pb2.FunctionGetOutputsRequest(call_id=CALL, wait_s=0.2)
        polls = [
            asyncio.ensure_future(conn.call(conn.ember.FunctionGetOutputs, request))
            for _ in range(100)
        ]
        # One poll has a handler: the others, sent with it, wait in gRPC for theirs.
        await asyncio.wait_for(handled.wait(), 10)
        await first.stop(1.0)
        api_pb2_grpc.add_EmberServicer_to_server(EmberService(plane), second)
        second.add_insecure_port(f"127.0.0.1:{port}")
        await second.start()
        responses = await asyncio.wait_for(asyncio.gather(*polls), 30)
        assert [list(r.outputs) for r in responses] == [[]] * 100  # each answered, after its wait
    finally:
        await conn.close()
        await second.stop(None)
