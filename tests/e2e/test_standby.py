"""Standby containers: after a container of some shape (image and limits) starts, the worker
starts one more of that shape ahead of time, and the next cold start of that shape takes it."""

import time
from collections.abc import Iterator
from typing import Any

import pytest

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
