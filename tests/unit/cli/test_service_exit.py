"""A long-lived service (`ember server`, `ember worker`) ends with a failure exit whenever it
was not asked to stop: the supervisor, or systemd, must see that it died."""

import asyncio
import os
import signal

import pytest

from ember.cli.service_commands import _serve_until_signalled


def test_a_service_that_ends_on_its_own_exits_with_1() -> None:
    async def ends() -> None:
        return None

    with pytest.raises(SystemExit) as exited:
        _serve_until_signalled(ends())
    assert exited.value.code == 1


def test_a_service_cancelled_from_within_exits_with_1() -> None:
    """What a failing loop of a task group can look like from outside: a cancellation, its
    error logged before."""

    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(SystemExit) as exited:
        _serve_until_signalled(cancelled())
    assert exited.value.code == 1


def test_a_service_stopped_by_sigterm_returns() -> None:
    async def until_stopped() -> None:
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)
        await asyncio.Event().wait()

    _serve_until_signalled(until_stopped())  # no SystemExit
