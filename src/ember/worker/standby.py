"""Standby containers: the first half of a container start, done before anyone asks.

Once a container of some shape (image and limits) has run its first input, the pool starts one
more of that shape in the background: runc run, the interpreter started, `ember` and the serializer
imported, the harness connected and waiting for a function. The next start order of that shape
takes it and only links in the source and loads the function: on a small image that is most of
a cold start saved (runc and the interpreter's start-up are 60 ms or more of it).

A standby is used once, by whichever function of its shape starts next, and never outlives the
worker. At most `limit` wait at once (the oldest goes first); one unused for `idle_s` is removed.
What a standby holds, an interpreter with `ember` imported, is a few tens of MB of memory that
the control plane does not count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ember.container import ExitStatus
from ember.errors import InvalidError
from ember.imagefs.client import PreparedImage
from ember.worker.container_start import ContainerShape, ContainerStarter, StartedContainer

log = logging.getLogger(__name__)

LIMIT = 4  # unless EMBER_STANDBY_CONTAINERS says otherwise
IDLE_S = 600.0
# A standby starts this long after the first input of the container that called for it has
# finished, so that the input's result reaches its caller first.
DELAY_S = 0.02
CONNECT_TIMEOUT_S = 60.0
# A standby that cannot be used (its process ended, or its imagefs daemon has gone) is removed
# this much later, not while the start that found it runs: removing one whose daemon had gone
# held that start up by 0.1-0.6 s, measured (its file systems letting go).
STALE_REMOVE_DELAY_S = 5.0


def limit_from_env() -> int:
    """`EMBER_STANDBY_CONTAINERS`: how many standbys may wait at once (0: none)."""
    configured = os.environ.get("EMBER_STANDBY_CONTAINERS", "").strip()
    if not configured:
        return LIMIT
    try:
        return max(0, int(configured))
    except ValueError:
        raise InvalidError(
            f"EMBER_STANDBY_CONTAINERS={configured!r} is not a whole number"
        ) from None


@dataclass
class _Starting:
    """A standby on its way, from before runc starts it until its harness has connected. A start
    order that finds none waiting claims it instead, and cuts its delay short."""

    hurry: asyncio.Event = field(default_factory=asyncio.Event)
    claim: asyncio.Future[StartedContainer | None] | None = None
    counted: bool = False  # it has room under the limit (until then it may wait long)


class StandbyPool:
    """Standby containers, at most `limit` of them at any moment: every one the pool has begun
    to start and not yet handed out or finished removing counts (`count()`), so a burst of
    first inputs, a slow start or a slow removal never makes more."""

    def __init__(
        self,
        starter: ContainerStarter,
        *,
        limit: int = LIMIT,
        idle_s: float = IDLE_S,
        delay_s: float = DELAY_S,
        stale_remove_delay_s: float = STALE_REMOVE_DELAY_S,
        new_id: Callable[[], str] = lambda: f"sb-{secrets.token_hex(8)}",
    ) -> None:
        self._starter = starter
        self._limit = limit
        self._idle_s = idle_s
        self._delay_s = delay_s
        self._stale_remove_delay_s = stale_remove_delay_s
        self._new_id = new_id
        self._waiting: dict[ContainerShape, StartedContainer] = {}  # oldest first
        self._starting: dict[ContainerShape, _Starting] = {}
        self._stale: dict[str, StartedContainer] = {}  # by runtime id, to be removed soon
        self._tasks: set[asyncio.Task[None]] = set()
        self._count = 0  # standbys that exist: starting, waiting, stale or being removed
        # Room under the limit, given out first come, first served.
        self._room = asyncio.Semaphore(max(limit, 1))

    def count(self) -> int:
        """How many standbys exist now (at most the limit)."""
        return self._count

    async def take(self, shape: ContainerShape, image: PreparedImage) -> StartedContainer | None:
        """A container of `shape`, now the caller's: a waiting one, or one on its way (started
        at once if it was still waiting out its delay); None if there is none. `image` is the
        image as prepared now: a standby on layers of an imagefs daemon that has since gone (or
        whose process ended) is removed instead."""
        container = self._waiting.pop(shape, None)
        if container is None:
            starting = self._starting.get(shape)
            # One still waiting for room may wait long: the caller starts its own instead.
            if starting is None or starting.claim is not None or not starting.counted:
                return None
            starting.claim = asyncio.get_running_loop().create_future()
            starting.hurry.set()
            try:
                container = await asyncio.shield(starting.claim)
            except asyncio.CancelledError:  # the caller stopped: the container is nobody's
                starting.claim.add_done_callback(self._remove_claimed)
                raise
            if container is None:
                return None
        if container.exited.done() or container.image.daemon != image.daemon:
            self._stale[container.runtime_id] = container  # still counted until it is removed
            loop = asyncio.get_running_loop()
            loop.call_later(self._stale_remove_delay_s, self._remove_stale, container.runtime_id)
            return None
        self._release()  # the caller's now
        return container

    def replenish(self, shape: ContainerShape) -> None:
        """Have a container of `shape` waiting soon, unless one is already (or on its way). At
        the limit, the oldest waiting standby of another shape makes way; when every standby is
        on its way or going, none is started."""
        if self._limit <= 0 or shape in self._waiting or shape in self._starting:
            return
        if self._count >= self._limit:
            if not self._waiting:
                return
            oldest = next(iter(self._waiting))
            self._background(self._remove(self._waiting.pop(oldest)))
        self._starting[shape] = _Starting()
        self._background(self._start(shape))

    async def close(self) -> None:
        """Remove every standby (the worker is stopping)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        left = [*self._waiting.values(), *self._stale.values()]
        self._waiting, self._stale = {}, {}
        await asyncio.gather(*(self._remove(c) for c in left), return_exceptions=True)

    def waiting(self) -> list[ContainerShape]:
        return list(self._waiting)

    async def _start(self, shape: ContainerShape) -> None:
        starting = self._starting[shape]
        container: StartedContainer | None = None
        try:
            await self._hold_room()
            starting.counted = True
            try:
                container = await self._started(shape, starting)
            finally:
                if container is None:
                    self._release()  # it never came to be, or was removed
        finally:
            del self._starting[shape]
            if starting.claim is not None and not starting.claim.done():
                # A start order waits for it: it is theirs (counted until `take` hands it out).
                starting.claim.set_result(container)
        if container is not None and starting.claim is None:
            self._waiting[shape] = container
            asyncio.get_running_loop().call_later(self._idle_s, self._expire, shape, container)

    async def _started(self, shape: ContainerShape, starting: _Starting) -> StartedContainer | None:
        """Start a standby of `shape` (after its delay, unless hurried) and wait for its harness
        to connect, unless a start order claims it first; None if it cannot be used."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(starting.hurry.wait(), self._delay_s)
        try:
            image = await self._starter.prepare(shape)
            container = await self._starter.start(self._new_id(), shape, image, standby=True)
        except Exception as error:  # only a later start's speed suffers
            log.warning("a standby container for image %s did not start: %s", shape.image_id, error)
            return None
        if starting.claim is not None:
            return container  # claimed while runc started it: the claimer waits for the harness
        try:
            connected = await self._connected(container, starting)
        except asyncio.CancelledError:
            await asyncio.shield(self._starter.remove(container))
            raise
        if not connected:
            log.warning("a standby container for image %s did not connect", shape.image_id)
            await self._starter.remove(container)
            return None
        return container

    async def _connected(self, container: StartedContainer, starting: _Starting) -> bool:
        """Whether the standby's harness connected (it has imported what it needs); a claim
        made meanwhile takes it as it is."""
        claimed = asyncio.ensure_future(starting.hurry.wait())
        try:
            outcome = await container.until_exit(
                _first(container.link.connected(), claimed), CONNECT_TIMEOUT_S
            )
        except TimeoutError:
            return starting.claim is not None
        finally:
            claimed.cancel()
        return not isinstance(outcome, ExitStatus) or starting.claim is not None

    # ---- the count

    async def _hold_room(self) -> None:
        """Wait until fewer than `limit` standbys exist, and count one more."""
        await self._room.acquire()
        self._count += 1

    def _release(self) -> None:
        self._count -= 1
        self._room.release()

    async def _remove(self, container: StartedContainer) -> None:
        try:
            await self._starter.remove(container)
        finally:
            self._release()

    def _remove_stale(self, runtime_id: str) -> None:
        container = self._stale.pop(runtime_id, None)
        if container is not None:
            self._background(self._remove(container))

    def _remove_claimed(self, claim: asyncio.Future[StartedContainer | None]) -> None:
        if not claim.cancelled() and claim.result() is not None:
            self._background(self._remove(claim.result()))

    def _expire(self, shape: ContainerShape, container: StartedContainer) -> None:
        if self._waiting.get(shape) is container:
            del self._waiting[shape]
            self._background(self._remove(container))

    def _background(self, work: object) -> None:
        task = asyncio.ensure_future(work)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)


async def _first(*waits: Awaitable[object]) -> None:
    """Return when the first of `waits` is done (the others are cancelled)."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        with contextlib.suppress(Exception):
            log.warning("standby containers: %s", task.exception())
