"""Timeouts, crashes and retries: a failed attempt runs again on a fresh container."""

import sqlite3
import time
import uuid
from typing import Any

import pytest

import ember
from ember import config


def test_timeout_fails_the_input_and_replaces_the_container(limits: Any) -> None:
    before = limits.sleep_then_host.remote(0)
    started = time.monotonic()
    with pytest.raises(ember.FunctionTimeoutError, match="timeout of 2 s"):
        limits.sleep_then_host.remote(30)
    assert time.monotonic() - started < 15
    after = limits.sleep_then_host.remote(0)
    assert after != before  # the container that timed out was replaced


def _attempts_logged(token: str, count: int) -> list[str]:
    """The containers `crash_on` printed it ran `token` in: once `count` are logged, or after 30 s."""
    deadline = time.monotonic() + 30
    while True:
        with sqlite3.connect(config.data_dir() / "ember.db") as db:
            lines = [
                data
                for (data,) in db.execute(
                    "SELECT data FROM logs WHERE function_name = 'crash_on' AND data LIKE ?"
                    " ORDER BY id",
                    (f"attempt {token} on %",),
                )
            ]
        if len(lines) >= count or time.monotonic() > deadline:
            return [line.split(" on ", 1)[1].strip() for line in lines]
        time.sleep(0.05)


def test_a_crashed_container_is_a_failed_attempt_retried_elsewhere(limits: Any) -> None:
    token = uuid.uuid4().hex
    warm = limits.crash_on.remote("", f"warm-{token}")  # a container of the function, idle now
    # The input goes to that idle container, which dies mid-input (os._exit, as a segfault
    # would); the retry runs on a new container, which returns its own name.
    survivor = limits.crash_on.remote(warm, token)
    assert survivor.startswith(("ta-", "sb-"))  # a container (started for it, or a standby)
    assert survivor != warm
    assert sorted(_attempts_logged(token, 2)) == sorted([warm, survivor])


def test_retries_run_out(limits: Any) -> None:
    with pytest.raises(ember.ExecutionError, match="exited with code 1"):
        limits.always_crash.remote()


def test_exceptions_are_retried_too(limits: Any) -> None:
    # The first attempt always raises; only a second run of the same input can return.
    assert limits.raise_once.remote(uuid.uuid4().hex) == "done"
