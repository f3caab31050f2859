"""Standby containers: after a container of some shape (image and limits) starts, the worker
starts one more of that shape ahead of time, and the next cold start of that shape takes it."""

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from ember import config
from ember.worker.standby import LIMIT
from tests.e2e.test_scaling import containers_of, wait_for


@pytest.fixture(scope="module")
def standby(load_app: Any) -> Iterator[Any]:
    module = load_app("standby")
    with module.app.run():
        yield module


def cold_call(module: Any, function: Any) -> tuple[float, dict]:
    """Call `function` once the app has no container left; (when the call began, what it saw)."""
    assert wait_for(lambda: containers_of(module.app.app_id) == 0, timeout=30)
    called_at = time.time()
    return called_at, function.remote()


def test_a_cold_start_takes_a_standby_of_its_shape(standby: Any) -> None:
    started_before_the_call = []
    for _ in range(3):  # a loaded machine may not have the standby up in time for the first
        standby.first.remote()
        time.sleep(0.5)  # the standby starts soon after the first input of the one it follows
        called_at, seen = cold_call(standby, standby.second)
        started_before_the_call.append(seen["at"] - seen["age_s"] < called_at)
        if started_before_the_call[-1]:
            break
    assert started_before_the_call[-1], "no cold start of `second` took a standby"
    # It serves a function it was not started for, with that function's identity and source.
    assert seen["container_id"].startswith("ta-")
    assert seen["module"] == "standby"
    assert "standby.py" in seen["source_files"]


def test_a_container_of_another_shape_starts_for_its_call(standby: Any) -> None:
    called_at, seen = cold_call(standby, standby.other_shape)
    assert seen["at"] - seen["age_s"] > called_at - 0.05  # its process began after the call


def standbys_now() -> int:
    """Standby containers on the worker now: those with a runtime directory (made before runc
    starts one, removed after it is gone)."""
    containers = config.data_dir() / "worker" / "runtime" / "containers"
    try:
        return sum(1 for entry in containers.iterdir() if entry.name.startswith("sb-"))
    except FileNotFoundError:
        return 0


def test_standbys_never_outnumber_the_limit_under_parallel_load(standby: Any) -> None:
    """Two parallel maps over several containers of one shape, three rounds, the containers gone
    between rounds: each container's first input asks for a standby of the shape at once."""
    most = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, standbys_now())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for _ in range(3):
            with ThreadPoolExecutor(2) as pool:
                maps = [pool.submit(lambda: sum(standby.busy.map(range(300)))) for _ in range(2)]
                assert [m.result(timeout=300) for m in maps] == [sum(range(300))] * 2
            assert wait_for(lambda: containers_of(standby.app.app_id) == 0, timeout=60)
    finally:
        done.set()
        sampler.join()
    assert 0 < most <= LIMIT  # the cluster runs with EMBER_STANDBY_CONTAINERS unset
