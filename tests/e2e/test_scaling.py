"""Basic scaling: more containers as the queue grows, bounded, and none when idle."""

import time
from collections.abc import Iterator
from typing import Any

import pytest

from ember.proto import api_pb2
from ember.sdk._calls import connection
from ember.sdk._sync import run_blocking


@pytest.fixture(scope="module")
def scaling(load_app: Any) -> Iterator[Any]:
    module = load_app("scaling")
    with module.app.run():
        yield module


def containers_of(app_id: str) -> int:
    async def ask() -> int:
        conn = await connection()
        apps = await conn.call(conn.ember.AppList, api_pb2.AppListRequest())
        return next((a.containers for a in apps.apps if a.app_id == app_id), 0)

    return run_blocking(ask())


def wait_for(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_queue_growth_adds_containers_up_to_max(scaling: Any) -> None:
    # Long enough inputs that the second container is up before the first runs out of work.
    hosts = list(scaling.busy_host.map([1.0] * 8))
    assert len(set(hosts)) == 2  # max_containers=2, and both were used


def test_idle_containers_stop_after_the_scaledown_window(scaling: Any) -> None:
    scaling.busy_host.remote(0)
    app_id = scaling.app.app_id
    # busy_host scales to zero; warm_host keeps its one container.
    assert wait_for(lambda: containers_of(app_id) == 1, timeout=20)


def test_min_containers_stay_warm(scaling: Any) -> None:
    assert wait_for(lambda: containers_of(scaling.app.app_id) >= 1, timeout=20)
    first = scaling.warm_host.remote()
    time.sleep(3)  # longer than its scaledown window
    assert scaling.warm_host.remote() == first
