"""Timeouts, crashes and retries: a failed attempt runs again on a fresh container."""

import time
from typing import Any

import pytest

import ember


def test_timeout_fails_the_input_and_replaces_the_container(limits: Any) -> None:
    before = limits.sleep_then_host.remote(0)
    started = time.monotonic()
    with pytest.raises(ember.FunctionTimeoutError, match="timeout of 2 s"):
        limits.sleep_then_host.remote(30)
    assert time.monotonic() - started < 15
    after = limits.sleep_then_host.remote(0)
    assert after != before  # the container that timed out was replaced


def test_a_crashed_container_is_a_failed_attempt_retried_elsewhere(limits: Any) -> None:
    # The first attempt dies mid-input (os._exit, as a segfault would); the retry succeeds.
    survivor = limits.crash_until.remote(time.time() + 0.3)
    assert survivor.startswith("ta-")


def test_retries_run_out(limits: Any) -> None:
    with pytest.raises(ember.ExecutionError, match="exited with code 1"):
        limits.always_crash.remote()


def test_exceptions_are_retried_too(limits: Any) -> None:
    assert limits.raise_until.remote(time.time() + 0.3) == "done"
