"""Where a container's root file system comes from: the one seam between the worker and images.

Images live in the chunk store; the host's imagefs daemon (started here, or found running from
before a worker restart) fetches each image's metadata, mounts it, and serves content lazily.
The first start of an image records what it read (the small files it opened, the pages of large
files), so that later cold starts on any host prefetch exactly that while the container starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ember.errors import ConnectionError, InvalidError
from ember.imagefs.client import ImageFSClient, PreparedImage

log = logging.getLogger(__name__)

# How long a first start may read before its recording is saved regardless.
RECORD_LIMIT_S = 120.0


class ImageRoots(Protocol):
    """Lifecycle: `prepare(store_url)` once the worker knows its control plane's chunk store,
    then `root_for()` on every container start (fast once the image is on the host), and
    `first_start_done()` when a start that `root_for` asked to record has done its reading."""

    async def prepare(self, store_url: str) -> None: ...

    async def root_for(self, image_id: str) -> PreparedImage: ...

    def first_start_done(self, image_id: str, prepared: PreparedImage) -> None: ...


def cache_limit_bytes(root: Path) -> int:
    """`EMBER_IMAGE_CACHE_BYTES`, or half the free space of the cache's file system."""
    configured = os.environ.get("EMBER_IMAGE_CACHE_BYTES")
    if configured:
        return int(configured)
    root.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(root).free // 2


class ImageFSRoots:
    def __init__(self, cache_root: Path) -> None:
        self.client = ImageFSClient(cache_root)
        self._store_url = ""
        self._recording: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._watched: set[str] = set()  # the daemon lives whose end this hears of
        # Starts that find the daemon gone start a new one one at a time, and the others then
        # find it running: containers start together, and daemons started at once on one root
        # fail on its socket ("Address already in use"), failing the starts that waited on them.
        self._restarting = asyncio.Lock()
        # Told a daemon life that ended: the containers on its mounts can read nothing more
        # they had not read (a page of the interpreter not yet needed kills them with SIGBUS).
        self.on_daemon_gone: Callable[[str], None] | None = None

    async def prepare(self, store_url: str) -> None:
        self._store_url = store_url
        await self.client.ensure_daemon(store_url, cache_limit_bytes(self.client.root))

    async def root_for(self, image_id: str) -> PreparedImage:
        if not image_id:
            raise InvalidError("the function names no image; deploy it again with this client")
        try:
            prepared = await self.client.prepare(image_id, records=True)
        except ConnectionError:  # the daemon died (or was stopped): start a new one
            log.warning("the imagefs daemon is gone; starting it again")
            async with self._restarting:
                await self.prepare(self._store_url)  # (unless another start just did)
            prepared = await self.client.prepare(image_id, records=True)
        self._watch(prepared)
        if not prepared.recorded and image_id not in self._recording:
            self._recording.add(image_id)
            loop = asyncio.get_running_loop()
            loop.call_later(RECORD_LIMIT_S, self.first_start_done, image_id, prepared)
            return prepared
        return prepared.as_recorded()

    def _watch(self, prepared: PreparedImage) -> None:
        """Hear when the daemon that prepared the image ends (once for each of its lives)."""
        if prepared.daemon in self._watched or not prepared.daemon_pid:
            return
        try:
            pidfd = os.pidfd_open(prepared.daemon_pid)
        except ProcessLookupError:  # gone already
            self._daemon_gone(prepared.daemon, None)
            return
        self._watched.add(prepared.daemon)
        loop = asyncio.get_running_loop()
        loop.add_reader(pidfd, self._daemon_gone, prepared.daemon, pidfd)

    def _daemon_gone(self, daemon: str, pidfd: int | None) -> None:
        if pidfd is not None:
            asyncio.get_running_loop().remove_reader(pidfd)
            os.close(pidfd)
        log.warning("the imagefs daemon ended; stopping the containers on its mounts")
        if self.on_daemon_gone is not None:
            self.on_daemon_gone(daemon)

    def first_start_done(self, image_id: str, prepared: PreparedImage) -> None:
        """Save what the image's first start on this host read (once, in the background)."""
        if image_id in self._recording:
            self._recording.discard(image_id)
            task = asyncio.ensure_future(self._record(image_id, prepared))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _record(self, image_id: str, prepared: PreparedImage) -> None:
        try:
            reads = await self.client.record(image_id, prepared.since)
            log.info("image %s: recorded %d reads of its first start", image_id, reads)
        except Exception as error:  # only later starts' prefetching suffers
            log.warning("image %s: recording its reads failed: %s", image_id, error)
