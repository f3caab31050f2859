"""The standby pool's rules, over a starter that starts nothing (the real one is covered end to
end in tests/e2e/test_standby.py): one per shape, used once, bounded, expiring, never a dead one."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from ember.container import ExitStatus
from ember.errors import InvalidError
from ember.imagefs.client import PreparedImage
from ember.worker.container_start import ContainerShape, StartedContainer
from ember.worker.standby import LIMIT, StandbyPool, limit_from_env

SMALL = ContainerShape("im-small", 0.0, 0)
BIG = ContainerShape("im-big", 2.0, 4096)
OTHER = ContainerShape("im-small", 0.0, 512)


class Link:
    def __init__(self, connects: bool, connect_gate: asyncio.Event | None) -> None:
        self._connects = connects
        self._gate = connect_gate

    async def connected(self) -> None:
        if not self._connects:
            await asyncio.Event().wait()
        if self._gate is not None:
            await self._gate.wait()


def prepared(daemon: str) -> PreparedImage:
    config: Any = None
    return PreparedImage(Path(), (), config, recorded=True, since=0.0, daemon=daemon)


NOW = prepared("daemon-1")


class Starter:
    """Records what the pool asks for; each container's process runs until `exit()`."""

    def __init__(self, connects: bool = True) -> None:
        self.connects = connects
        self.image = NOW  # what `prepare` answers
        self.gate: asyncio.Event | None = None  # when set, each start waits for it
        self.connect_gate: asyncio.Event | None = None  # when set, each harness waits for it
        self.started: list[tuple[str, ContainerShape, bool]] = []
        self.removed: list[str] = []
        self._exits: dict[str, asyncio.Event] = {}
        self.most_alive = 0  # the most containers started and not yet removed at once

    async def prepare(self, shape: ContainerShape) -> PreparedImage:
        return self.image

    async def start(
        self,
        runtime_id: str,
        shape: ContainerShape,
        image: PreparedImage,
        *,
        standby: bool = False,
    ) -> StartedContainer:
        self.started.append((runtime_id, shape, standby))
        self.most_alive = max(self.most_alive, len(self.started) - len(self.removed))
        if self.gate is not None:
            await self.gate.wait()
        self._exits[runtime_id] = exit_event = asyncio.Event()

        async def wait() -> ExitStatus:
            await exit_event.wait()
            return ExitStatus(exit_code=0, signal=None, oom_killed=False)

        exited = asyncio.create_task(wait())
        link: Any = Link(self.connects, self.connect_gate)
        return StartedContainer(runtime_id, shape, image, link, Path(), Path(), exited)

    async def remove(self, container: StartedContainer) -> None:
        self.removed.append(container.runtime_id)
        self.exit(container.runtime_id)

    def exit(self, runtime_id: str) -> None:
        self._exits[runtime_id].set()


def pool(starter: Starter, **kwargs: Any) -> StandbyPool:
    names = (f"sb-{n}" for n in itertools.count())
    kwargs = {"delay_s": 0.0, "stale_remove_delay_s": 0.0, "new_id": lambda: next(names)} | kwargs
    return StandbyPool(starter, **kwargs)  # type: ignore[arg-type]


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_standby_of_a_shape_is_taken_once() -> None:
    starter = Starter()
    standbys = pool(starter)
    assert await standbys.take(SMALL, NOW) is None
    standbys.replenish(SMALL)
    standbys.replenish(SMALL)  # one is on its way already
    await settle()
    assert starter.started == [("sb-0", SMALL, True)]
    assert await standbys.take(OTHER, NOW) is None  # same image, other limits
    taken = await standbys.take(SMALL, NOW)
    assert taken is not None and taken.runtime_id == "sb-0"
    assert await standbys.take(SMALL, NOW) is None
    assert starter.removed == []  # the taker's now
    await standbys.close()
    assert starter.removed == []


async def test_a_start_order_takes_a_standby_on_its_way_and_starts_it_at_once() -> None:
    starter = Starter()
    standbys = pool(starter, delay_s=60.0)
    standbys.replenish(SMALL)
    await settle()
    assert starter.started == []  # waiting out its delay
    taken = await asyncio.wait_for(standbys.take(SMALL, NOW), timeout=1.0)
    assert taken is not None and taken.runtime_id == "sb-0"
    await settle()
    assert standbys.waiting() == [] and starter.removed == []
    standbys.replenish(SMALL)  # the next one
    await settle()
    assert [started[0] for started in starter.started] == ["sb-0"]
    await standbys.close()


async def test_a_standby_claimed_by_a_start_that_stopped_is_removed() -> None:
    starter = Starter()
    starter.gate = asyncio.Event()
    standbys = pool(starter)
    standbys.replenish(SMALL)
    await settle()
    taking = asyncio.create_task(standbys.take(SMALL, NOW))
    await settle()
    taking.cancel()
    starter.gate.set()
    await settle()
    assert taking.cancelled()
    assert starter.removed == ["sb-0"]
    assert standbys.waiting() == []


async def test_the_oldest_goes_when_more_than_the_limit_wait() -> None:
    starter = Starter()
    standbys = pool(starter, limit=2)
    for shape in (SMALL, BIG, OTHER):
        standbys.replenish(shape)
        await settle()
    await settle()
    assert starter.removed == ["sb-0"]
    assert standbys.waiting() == [BIG, OTHER]
    await standbys.close()
    assert sorted(starter.removed) == ["sb-0", "sb-1", "sb-2"]
    assert standbys.waiting() == []


async def test_an_unused_standby_expires() -> None:
    starter = Starter()
    standbys = pool(starter, idle_s=0.05)
    standbys.replenish(SMALL)
    await settle()
    assert standbys.waiting() == [SMALL]
    await asyncio.sleep(0.1)
    await settle()
    assert standbys.waiting() == []
    assert starter.removed == ["sb-0"]


async def test_a_standby_whose_process_ended_is_not_handed_out() -> None:
    starter = Starter()
    standbys = pool(starter)
    standbys.replenish(SMALL)
    await settle()
    starter.exit("sb-0")
    await settle()
    assert await standbys.take(SMALL, NOW) is None
    await settle()
    assert starter.removed == ["sb-0"]


async def test_a_standby_on_layers_of_a_daemon_gone_since_is_not_handed_out() -> None:
    starter = Starter()
    standbys = pool(starter)
    standbys.replenish(SMALL)
    await settle()
    assert await standbys.take(SMALL, prepared("daemon-2")) is None  # the imagefs daemon restarted
    await settle()
    assert starter.removed == ["sb-0"]


async def test_a_standby_that_cannot_be_used_is_removed_after_a_while_or_at_close() -> None:
    starter = Starter()
    standbys = pool(starter, stale_remove_delay_s=60.0)
    standbys.replenish(SMALL)
    await settle()
    assert await standbys.take(SMALL, prepared("daemon-2")) is None
    await settle()
    assert starter.removed == []  # not while the start that found it runs
    await standbys.close()
    assert starter.removed == ["sb-0"]


async def test_a_standby_that_exits_before_its_harness_connects_is_removed() -> None:
    starter = Starter(connects=False)
    standbys = pool(starter)
    standbys.replenish(SMALL)
    await settle()
    starter.exit("sb-0")
    await settle()
    assert standbys.waiting() == []
    assert starter.removed == ["sb-0"]
    standbys.replenish(SMALL)  # and the shape may have one again
    await settle()
    assert [started[0] for started in starter.started] == ["sb-0", "sb-1"]
    await standbys.close()
    assert starter.removed == ["sb-0", "sb-1"]


async def test_no_standbys_with_a_limit_of_zero() -> None:
    starter = Starter()
    standbys = pool(starter, limit=0)
    standbys.replenish(SMALL)
    await settle()
    assert starter.started == []


def test_the_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBER_STANDBY_CONTAINERS", raising=False)
    assert limit_from_env() == LIMIT
    monkeypatch.setenv("EMBER_STANDBY_CONTAINERS", "0")
    assert limit_from_env() == 0
    monkeypatch.setenv("EMBER_STANDBY_CONTAINERS", "two")
    with pytest.raises(InvalidError, match=r"EMBER_STANDBY_CONTAINERS='two' is not a whole number"):
        limit_from_env()


async def test_a_shape_whose_standby_is_connecting_gets_no_second_one() -> None:
    """The leak seen under load: a standby stopped counting as on its way once runc had started
    it, so a second replenish started another, and the first was then forgotten."""
    starter = Starter()
    starter.connect_gate = asyncio.Event()
    standbys = pool(starter)
    standbys.replenish(SMALL)
    await settle()  # runc started it; its harness has not connected
    standbys.replenish(SMALL)
    await settle()
    assert [started[0] for started in starter.started] == ["sb-0"]
    starter.connect_gate.set()
    await settle()
    assert standbys.waiting() == [SMALL] and standbys.count() == 1
    await standbys.close()
    assert starter.removed == ["sb-0"] and standbys.count() == 0


async def test_a_start_order_claims_a_standby_whose_harness_is_still_connecting() -> None:
    starter = Starter()
    starter.connect_gate = asyncio.Event()
    standbys = pool(starter)
    standbys.replenish(SMALL)
    await settle()
    taken = await asyncio.wait_for(standbys.take(SMALL, NOW), timeout=1.0)
    assert taken is not None and taken.runtime_id == "sb-0"
    assert standbys.count() == 0 and standbys.waiting() == []


async def test_no_more_than_the_limit_exist_at_any_moment_under_load() -> None:
    """Many shapes asking at once, slow starts and slow removals, standbys taken meanwhile: the
    containers alive never outnumber the limit."""
    starter = Starter()
    starter.gate = asyncio.Event()  # starts hang until let go
    standbys = pool(starter, limit=3)
    shapes = [ContainerShape(f"im-{n}", 0.0, 0) for n in range(12)]
    for shape in shapes[:6]:
        standbys.replenish(shape)
    await settle()
    assert len(starter.started) == 3  # the others wait for room
    starter.gate.set()
    await settle()
    for round_ in range(5):
        for shape in shapes:
            standbys.replenish(shape)
            assert standbys.count() <= 3
        await settle()
        taken = await standbys.take(shapes[round_], NOW)
        if taken is not None:
            await starter.remove(taken)
        await settle()
        assert standbys.count() <= 3
    assert starter.most_alive <= 3
    await standbys.close()
    assert standbys.count() == 0
    assert len(starter.removed) == len(starter.started)
