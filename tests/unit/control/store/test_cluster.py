"""Workers and containers in the store."""

from ember.control.store import Container, schema


def container(container_id: str, state: str = schema.STARTING) -> Container:
    return Container(container_id, "ap-1", "fu-1", "wk-1", state, 0.5, 256, 10.0)


async def test_register_worker_stores_its_capacity(store) -> None:
    await store.cluster.register_worker("wk-1", "host-a", 4.0, 8192, 1.0)
    [worker] = await store.cluster.workers()
    assert (worker.worker_id, worker.hostname, worker.cpu, worker.memory_mb) == (
        "wk-1",
        "host-a",
        4.0,
        8192,
    )
    assert worker.last_heartbeat_at == 1.0


async def test_register_worker_again_updates_it_in_place(store) -> None:
    await store.cluster.register_worker("wk-1", "host-a", 4.0, 8192, 1.0)
    await store.cluster.register_worker("wk-1", "host-b", 8.0, 16384, 2.0)
    [worker] = await store.cluster.workers()
    assert (worker.hostname, worker.cpu, worker.memory_mb, worker.last_heartbeat_at) == (
        "host-b",
        8.0,
        16384,
        2.0,
    )


async def test_heartbeat_worker_moves_its_last_heartbeat(store) -> None:
    await store.cluster.register_worker("wk-1", "host-a", 4.0, 8192, 1.0)
    await store.cluster.heartbeat_worker("wk-1", 9.0)
    [worker] = await store.cluster.workers()
    assert worker.last_heartbeat_at == 9.0


async def test_live_containers_leaves_out_stopped_ones(store) -> None:
    await store.cluster.add_container(container("ta-1"))
    await store.cluster.add_container(container("ta-2"))
    await store.cluster.set_container_state(["ta-1"], schema.RUNNING, 11.0)
    await store.cluster.set_container_state(["ta-2"], schema.STOPPED, 12.0, "idle")
    assert await store.cluster.live_containers() == [container("ta-1", schema.RUNNING)]


async def test_stopping_a_container_records_when_and_why(store) -> None:
    await store.cluster.add_container(container("ta-1"))
    await store.cluster.set_container_state(["ta-1"], schema.STOPPED, 12.0, "idle")
    c = schema.containers.c
    async with store.engine.connect() as conn:
        row = (
            await conn.execute(
                schema.containers.select()
                .with_only_columns(c.state, c.stopped_at, c.exit_reason)
                .where(c.id == "ta-1")
            )
        ).one()
    assert tuple(row) == (schema.STOPPED, 12.0, "idle")
