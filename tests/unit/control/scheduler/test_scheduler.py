"""The scheduler over a real store and a fake clock: placing, and making room by eviction."""

import pickle
from dataclasses import dataclass

import pytest

from ember.control.clock import FakeClock
from ember.control.queue.dispatcher import Dispatcher
from ember.control.scheduler.cluster import Cluster, FunctionInfo, LiveContainer
from ember.control.scheduler.scheduler import WORKER_TIMEOUT_S, Scheduler
from ember.control.server import ControlPlane
from ember.control.store import Container, NewInput, Store, schema
from ember.proto import api_pb2


@dataclass
class World:
    store: Store
    clock: FakeClock
    cluster: Cluster
    dispatcher: Dispatcher
    scheduler: Scheduler


@pytest.fixture
def world(store, clock) -> World:
    cluster = Cluster()
    dispatcher = Dispatcher(store, clock, cluster.definition, cluster.count_containers)
    scheduler = Scheduler(store, clock, cluster, dispatcher)
    cluster.register_worker("wk-1", "host-a", 1.0, 1024, clock.now())
    return World(store, clock, cluster, dispatcher, scheduler)


def definition(name: str, cpu: float, min_containers: int = 0) -> api_pb2.FunctionDefinition:
    return api_pb2.FunctionDefinition(
        name=name,
        module="app",
        resources=api_pb2.Resources(cpu=cpu, memory_mb=128),
        autoscaling=api_pb2.Autoscaling(min_containers=min_containers, scaledown_window_s=60),
    )


async def add_function(world: World, make_function, d: api_pb2.FunctionDefinition) -> str:
    function_id = await make_function(d)
    app_id = (await world.store.apps.function(function_id)).app_id
    world.cluster.remember_function(FunctionInfo(function_id, app_id, d))
    world.cluster.app_live(app_id)
    return function_id


async def submit(store: Store, function_id: str, call_id: str) -> list:
    args = pickle.dumps(((1,), {}))
    return await store.calls.create_call(
        call_id, function_id, api_pb2.CALL_KIND_REMOTE, [NewInput(0, args, None)], True, 0.0
    )


def add_running(world: World, container_id: str, function_id: str, cpu: float) -> None:
    info = world.cluster.functions[function_id]
    world.cluster.add_container(
        LiveContainer(container_id, info.app_id, function_id, "wk-1", cpu, 128, schema.RUNNING, 0.0)
    )


def orders(world: World) -> list[api_pb2.WorkerOrder]:
    queue = world.cluster.orders("wk-1")
    return [queue.get_nowait() for _ in range(queue.qsize())]


def states(world: World) -> dict[str, str]:
    return {c.container_id: c.state for c in world.cluster.containers.values()}


async def test_a_first_input_places_a_container_and_orders_its_start(world, make_function) -> None:
    function_id = await add_function(world, make_function, definition("square", 0.5))
    world.dispatcher.enqueue(await submit(world.store, function_id, "fc-" + "1" * 16))
    await world.scheduler.tick()
    [container] = world.cluster.containers.values()
    assert (container.function_id, container.worker_id, container.state) == (
        function_id,
        "wk-1",
        schema.STARTING,
    )
    [order] = orders(world)
    assert order.start.container_id == container.container_id
    assert order.start.function.name == "square"
    [stored] = await world.store.cluster.live_containers()
    assert stored.container_id == container.container_id


async def test_no_room_stops_the_longest_idle_container_of_another_function(
    world, make_function
) -> None:
    old = await add_function(world, make_function, definition("old", 0.5))
    add_running(world, "ta-older", old, 0.5)
    world.clock.advance(10)
    world.dispatcher.idle_since("ta-older")  # idle since the start
    world.clock.advance(10)
    add_running(world, "ta-newer", old, 0.5)
    new = await add_function(world, make_function, definition("new", 0.5))
    world.dispatcher.enqueue(await submit(world.store, new, "fc-" + "2" * 16))
    await world.scheduler.tick()
    assert states(world) == {"ta-older": schema.STOPPING, "ta-newer": schema.RUNNING}
    assert [o.stop_container_id for o in orders(world)] == ["ta-older"]


async def test_eviction_keeps_the_other_functions_min_containers(world, make_function) -> None:
    warm = await add_function(world, make_function, definition("warm", 1.0, min_containers=1))
    add_running(world, "ta-warm", warm, 1.0)
    new = await add_function(world, make_function, definition("new", 0.5))
    world.dispatcher.enqueue(await submit(world.store, new, "fc-" + "3" * 16))
    await world.scheduler.tick()
    assert states(world) == {"ta-warm": schema.RUNNING}
    assert orders(world) == []


async def test_eviction_waits_for_the_room_already_being_freed(world, make_function) -> None:
    old = await add_function(world, make_function, definition("old", 0.5))
    add_running(world, "ta-a", old, 0.5)
    add_running(world, "ta-b", old, 0.5)
    new = await add_function(world, make_function, definition("new", 0.5))
    world.dispatcher.enqueue(await submit(world.store, new, "fc-" + "4" * 16))
    await world.scheduler.tick()
    await world.scheduler.tick()  # the evicted container has not exited yet
    assert sorted(states(world).values()) == [schema.RUNNING, schema.STOPPING]


async def test_a_tick_after_a_restart_survives_containers_of_stopped_apps(tmp_path) -> None:
    clock = FakeClock()
    plane = await ControlPlane.open(tmp_path / "control", clock=clock)
    store = plane.store
    await store.cluster.register_worker("wk-1", "host-a", 1.0, 1024, clock.now())
    gone_app = await store.apps.create("gone", api_pb2.APP_STATE_EPHEMERAL, clock.now())
    gone = (await store.apps.publish(gone_app, "", [definition("gone", 1.0)]))["gone"]
    await store.cluster.add_container(
        Container("ta-gone", gone_app, gone, "wk-1", schema.STOPPING, 1.0, 128, clock.now())
    )
    await store.apps.stop([gone_app], clock.now())
    app = await store.apps.create("live", api_pb2.APP_STATE_EPHEMERAL, clock.now())
    live = (await store.apps.publish(app, "", [definition("live", 0.5)]))["live"]
    await submit(store, live, "fc-" + "5" * 16)
    await plane.close()

    plane = await ControlPlane.open(tmp_path / "control", clock=clock)
    try:
        assert set(plane.cluster.containers) == {"ta-gone"}
        await plane.scheduler.tick()
    finally:
        await plane.close()


async def test_a_worker_given_up_then_back_gets_its_orders_on_the_stream_it_kept(
    world: World, make_function
) -> None:
    """A worker silent past WORKER_TIMEOUT_S (stopped, not dead) is given up; when it answers
    again it registers anew, its order stream still open: that stream must get the new orders
    (before, they went to a queue nobody read, and the function waited for ever)."""
    stream_queue = world.cluster.orders("wk-1")  # what the worker's open stream reads
    function_id = await add_function(world, make_function, definition("f", cpu=0.5))
    world.dispatcher.enqueue(await submit(world.store, function_id, "fc-" + "be" * 16))
    await world.scheduler.tick()
    assert [o.WhichOneof("order") for o in orders(world)] == ["start"]
    world.clock.advance(WORKER_TIMEOUT_S + 1)
    await world.scheduler.reap()
    assert "wk-1" not in world.cluster.workers
    assert world.scheduler.waiting_reason(function_id) == "no worker connected"
    await world.scheduler.register_worker("wk-1", "host-a", 1.0, 1024, started=False)
    await world.scheduler.tick()
    assert world.cluster.orders("wk-1") is stream_queue
    [order] = orders(world)
    assert order.start.function_id == function_id
    assert world.scheduler.waiting_reason(function_id) == ""


async def test_a_starting_container_that_asks_for_inputs_is_running_in_both_views(
    world, make_function
) -> None:
    function_id = await add_function(world, make_function, definition("f", cpu=0.5))
    world.dispatcher.enqueue(await submit(world.store, function_id, "fc-" + "ab" * 16))
    await world.scheduler.tick()
    [container_id] = states(world)
    await world.scheduler.container_running(container_id)
    assert states(world) == {container_id: schema.RUNNING}
    [stored] = await world.store.cluster.live_containers()
    assert stored.state == schema.RUNNING
    await world.scheduler.stop_container(container_id, "its app stopped")
    await world.scheduler.container_running(container_id)  # a late request changes nothing
    assert states(world) == {container_id: schema.STOPPING}


async def test_a_worker_registering_as_started_again_loses_its_earlier_containers(
    world, make_function
) -> None:
    function_id = await add_function(world, make_function, definition("f", cpu=0.5))
    add_running(world, "ta-old", function_id, 0.5)
    await world.scheduler.register_worker("wk-1", "host-a", 1.0, 1024, started=False)
    assert set(states(world)) == {"ta-old"}  # reconnecting: its containers live on
    await world.scheduler.register_worker("wk-1", "host-a", 1.0, 1024, started=True)
    assert states(world) == {}
