"""The live view on plain data: each change keeps it whole."""

from ember.control.scheduler.cluster import Cluster, FunctionInfo, LiveContainer, LiveWorker
from ember.control.store import schema
from ember.proto import api_pb2


def start_order(container_id: str) -> api_pb2.WorkerOrder:
    return api_pb2.WorkerOrder(start=api_pb2.ContainerSpec(container_id=container_id))


def container(container_id: str, worker_id: str = "wk-1", state: str = schema.RUNNING):
    return LiveContainer(container_id, "ap-1", "fu-1", worker_id, 0.5, 128, state, 0.0)


def queued(cluster: Cluster, worker_id: str) -> list[str]:
    queue = cluster.orders(worker_id)
    return [queue.get_nowait().start.container_id for _ in range(queue.qsize())]


def test_a_worker_that_registers_again_keeps_its_orders_and_its_new_capacity() -> None:
    cluster = Cluster()
    cluster.register_worker("wk-1", "host-a", 1.0, 1024, now=1.0)
    stream = cluster.orders("wk-1")  # what its open order stream reads
    cluster.order("wk-1", start_order("ta-1"))
    cluster.register_worker("wk-1", "host-b", 2.0, 2048, now=5.0)
    assert cluster.workers["wk-1"] == LiveWorker("wk-1", "host-b", 2.0, 2048, 5.0)
    assert cluster.orders("wk-1") is stream
    assert queued(cluster, "wk-1") == ["ta-1"]


def test_a_worker_given_up_loses_its_undelivered_orders_and_gets_no_more() -> None:
    cluster = Cluster()
    cluster.register_worker("wk-1", "host-a", 1.0, 1024, now=1.0)
    cluster.order("wk-1", start_order("ta-1"))
    cluster.forget_worker("wk-1")
    cluster.order("wk-1", start_order("ta-2"))
    assert "wk-1" not in cluster.workers
    assert queued(cluster, "wk-1") == []
    assert not cluster.worker_heard("wk-1", now=2.0)


def test_a_heartbeat_moves_only_its_workers_time() -> None:
    cluster = Cluster()
    cluster.register_worker("wk-1", "host-a", 1.0, 1024, now=1.0)
    cluster.register_worker("wk-2", "host-b", 1.0, 1024, now=1.0)
    assert cluster.worker_heard("wk-1", now=7.0)
    assert [w.last_heartbeat_at for w in cluster.workers.values()] == [7.0, 1.0]


def test_containers_are_added_changed_and_removed_with_the_capacity_they_hold() -> None:
    cluster = Cluster()
    cluster.register_worker("wk-1", "host-a", 2.0, 1024, now=1.0)
    cluster.add_container(container("ta-1", state=schema.STARTING))
    cluster.add_container(container("ta-2"))
    cluster.set_container_state("ta-1", schema.STOPPING)
    assert {c.container_id: c.state for c in cluster.containers_on("wk-1")} == {
        "ta-1": schema.STOPPING,
        "ta-2": schema.RUNNING,
    }
    [capacity] = cluster.capacities()
    assert (capacity.free_cpu, capacity.free_memory_mb) == (1.0, 768)
    assert cluster.remove_container("ta-1") == container("ta-1", state=schema.STOPPING)
    assert cluster.remove_container("ta-1") is None
    assert cluster.count_containers("fu-1") == 1


def test_apps_go_live_and_stop_and_functions_are_remembered() -> None:
    cluster = Cluster()
    cluster.app_live("ap-1")
    cluster.app_live("ap-2")
    cluster.apps_stopped(["ap-1"])
    definition = api_pb2.FunctionDefinition(name="square")
    cluster.remember_function(FunctionInfo("fu-1", "ap-2", definition))
    assert cluster.live_apps == {"ap-2"}
    assert cluster.definition("fu-1") == definition


def test_restore_replaces_the_whole_view() -> None:
    cluster = Cluster()
    cluster.app_live("ap-old")
    cluster.add_container(container("ta-old"))
    cluster.restore(
        ["ap-1"],
        [FunctionInfo("fu-1", "ap-1", api_pb2.FunctionDefinition(name="f"))],
        [LiveWorker("wk-1", "host-a", 1.0, 1024, 3.0)],
        [container("ta-1")],
    )
    assert cluster.live_apps == {"ap-1"}
    assert set(cluster.functions) == {"fu-1"}
    assert set(cluster.workers) == {"wk-1"}
    assert set(cluster.containers) == {"ta-1"}


def test_images_in_use_are_those_of_live_apps_functions() -> None:
    cluster = Cluster()
    cluster.app_live("ap-live")
    for function_id, app_id, image_id in (("fu-1", "ap-live", "im-a"), ("fu-2", "ap-gone", "im-b")):
        definition = api_pb2.FunctionDefinition(name=function_id, image_id=image_id)
        cluster.remember_function(FunctionInfo(function_id, app_id, definition))
    assert cluster.images_in_use() == {"im-a"}
