"""The host's imagefs daemon: the image cache, the FUSE server for misses, and a control socket.

One per host, started by the worker (`python -m ember.imagefs.daemon`) in a session of its own,
so that a worker restart leaves it, its mounts and the containers reading through them alone;
the new worker finds it through the socket. State lives under the cache root:

    daemon.sock        the control socket: one JSON request per line, one JSON answer per line
    daemon.pid
    fuse/              the FUSE mount (overlay's last data-only layer)
    mnt/<image id>/    each cached image's erofs metadata image, mounted

Requests: `prepare` (fetch an image's content index and metadata, mount it, start prefetching what a
start of it read before), `record` (after a first start: save what it read, and the
pack of them), `stats`, `collect` (garbage-collect images not in a list), `ping`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from ember.container import overlay
from ember.errors import Error
from ember.imagefs.cache import ImageCache
from ember.imagefs.fuse import ObjectFS
from ember.imagefs.index import ContentIndex
from ember.imagefs.recording import Recorded
from ember.imagefs.store import open_store

log = logging.getLogger(__name__)

SOCKET_NAME = "daemon.sock"
PID_NAME = "daemon.pid"
TOUCH_EVERY_S = 60.0
RECORDING_LIMIT_S = 300.0  # the worker saves a recording after 120 s at most


class Daemon:
    def __init__(self, cache: ImageCache) -> None:
        self.cache = cache
        self.root = cache.root
        self.fuse_mount = self.root / "fuse"
        self.mounts = self.root / "mnt"
        self._mounted: set[str] = {
            p.name for p in overlay.mounts_under(self.mounts) if p != self.mounts
        }
        # Whether a start of the image recorded its reads, looked up at the image's first prepare
        # only: a start after that has the content the recording would fetch.
        self._recorded: dict[str, bool] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._touched: dict[str, float] = {}
        # Names this daemon's life: mounts prepared by an earlier daemon serve nothing any more.
        self.instance = secrets.token_hex(8)
        self._nursery: trio.Nursery | None = None

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        socket_path = self.root / SOCKET_NAME
        socket_path.unlink(missing_ok=True)
        listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await listener.bind(str(socket_path))
        listener.listen(64)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.serve_listeners(self._connection, [trio.SocketListener(listener)])

    async def _connection(self, stream: trio.SocketStream) -> None:
        # Every connection's handler runs in the daemon's nursery: an error here must end this
        # connection only (a worker that gave up on its request, say), never the daemon.
        buffer = b""
        try:
            async with stream:
                async for data in stream:
                    buffer += data
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        answer = await self._answer(json.loads(line))
                        await stream.send_all(json.dumps(answer).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("an imagefs connection failed")

    async def _answer(self, request: dict) -> dict:
        try:
            handler = getattr(self, f"_op_{request['op']}")
            return {"ok": True, **await handler(request)}
        except Error as error:
            return {"ok": False, "kind": type(error).__name__, "message": str(error)}
        except Exception as error:
            log.exception("imagefs request %s failed", request.get("op"))
            return {"ok": False, "kind": "ExecutionError", "message": f"imagefs: {error!r}"}

    async def _op_ping(self, request: dict) -> dict:
        return {"pid": os.getpid()}

    async def _op_prepare(self, request: dict) -> dict:
        image_id = request["image"]
        target = self.mounts / image_id
        found: dict[str, Any] = {}
        indexed: Future[ContentIndex] = Future()

        async def fetch(name: str, function: Callable[..., Any], *args: Any) -> None:
            found[name] = await trio.to_thread.run_sync(function, *args)

        async def load() -> None:
            try:
                await fetch("loaded", self.cache.load_image, image_id)
            except BaseException as error:
                indexed.set_exception(error)
                raise
            indexed.set_result(found["loaded"])

        async def prefetch_recorded() -> None:
            # The recording is small and the prefetch starts as soon as it is here: the chunks
            # are fetched while the content index is read, and placed once it is loaded.
            reads = await trio.to_thread.run_sync(self.cache.recorded_reads, image_id)
            self._recorded[image_id] = reads is not None
            if reads is None and request.get("records"):  # this start records
                self.cache.start_recording(image_id)
                assert self._nursery is not None
                self._nursery.start_soon(self._stop_recording_later, image_id)
            if reads:
                assert self._nursery is not None
                self._nursery.start_soon(self._prefetch, image_id, reads, indexed)
            found["prefetching"] = len(reads or ())

        # Containers of one image start together: one of them fetches and mounts. The content
        # index, the metadata image and the recorded reads are fetched at once.
        async with self._locks.setdefault(image_id, trio.Lock()):
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(load)
                    if image_id not in self._mounted:
                        nursery.start_soon(fetch, "meta", self.cache.metadata_image, image_id)
                    if image_id not in self._recorded:
                        nursery.start_soon(prefetch_recorded)
            except BaseExceptionGroup as group:  # the first failure says it (a missing image...)
                raise _first(group) from None
            loaded: ContentIndex = found["loaded"]
            if image_id not in self._mounted:
                target.mkdir(parents=True, exist_ok=True)
                overlay.mount(found["meta"], target, "erofs", readonly=True)
                self._mounted.add(image_id)
        if time.monotonic() - self._touched.get(image_id, -TOUCH_EVERY_S) >= TOUCH_EVERY_S:
            self._touched[image_id] = time.monotonic()  # an LRU stamp; no need at every start
            self.cache.touch_image(loaded)
        return {
            "metadata": str(target),
            "data_layers": [str(self.cache.objects), str(self.fuse_mount)],
            "config": loaded.config.to_json(),
            "prefetching": found.get("prefetching", 0),
            "recorded": self._recorded.get(image_id, False),
            "now": time.monotonic(),
            "daemon": self.instance,
            "pid": os.getpid(),
        }

    async def _prefetch(
        self,
        image_id: str,
        recorded: list[Recorded],
        indexed: Future[ContentIndex],
    ) -> None:
        try:
            await trio.to_thread.run_sync(self.cache.prefetch, image_id, recorded, indexed)
        except Exception:  # a later read fetches what this could not, or fails itself
            log.exception("prefetching image %s failed", image_id)

    async def _stop_recording_later(self, image_id: str) -> None:
        """A recording whose `record` never comes (its worker went away) ends anyway: while one
        runs, this host pushes no pages ahead and stages small files."""
        await trio.sleep(RECORDING_LIMIT_S)
        self.cache.stop_recording(image_id)

    async def _op_record(self, request: dict) -> dict:
        image_id = request["image"]
        loaded = await trio.to_thread.run_sync(self.cache.load_image, image_id)
        reads = self.cache.reads.since(request["since"], loaded)
        self.cache.stop_recording(image_id)
        if reads and await trio.to_thread.run_sync(self.cache.recorded_reads, image_id) is None:
            await trio.to_thread.run_sync(self.cache.save_reads, image_id, reads)
        # Nothing read through imagefs: this host had it all, and has nothing to record.
        self._recorded[image_id] = True
        return {"chunks": len(reads)}

    async def _op_stats(self, request: dict) -> dict:
        stats = self.cache.stats
        return {
            "chunks_fetched": stats.chunks_fetched,
            "bytes_fetched": stats.bytes_fetched,
            "bytes_transferred": stats.bytes_transferred,
            "corrupt_chunks": stats.corrupt_chunks,
            "evicted_objects": stats.evicted_objects,
            "used_bytes": self.cache.used_bytes,
            "images": self.cache.cached_images(),
        }

    async def _op_collect(self, request: dict) -> dict:
        keep = set(request["keep"])
        for image_id in sorted(self._mounted - keep):
            overlay.unmount(self.mounts / image_id)
            (self.mounts / image_id).rmdir()
            self._mounted.discard(image_id)
            self._recorded.pop(image_id, None)
        removed = await trio.to_thread.run_sync(self.cache.collect_garbage, keep)
        return {"objects_removed": removed}

    def unmount_all(self) -> None:
        for image_id in sorted(self._mounted):
            overlay.unmount(self.mounts / image_id)


def _first(group: BaseExceptionGroup) -> BaseException:
    error = group.exceptions[0]
    return _first(error) if isinstance(error, BaseExceptionGroup) else error


async def _main(daemon: Daemon) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve)
        nursery.start_soon(pyfuse3.main)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


def main() -> None:
    parser = argparse.ArgumentParser(description="ember imagefs daemon (started by the worker)")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--store", required=True, help="chunk store URL")
    parser.add_argument("--limit-bytes", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s imagefs %(levelname)s %(message)s")

    root = args.root.absolute()
    root.mkdir(parents=True, exist_ok=True)
    cache = ImageCache(root, open_store(args.store), args.limit_bytes)
    daemon = Daemon(cache)
    # First a mount left by a daemon that died: until it goes, even a stat of its mount point
    # fails (ENOTCONN), and so would the mkdir below.
    overlay.unmount(daemon.fuse_mount)
    daemon.fuse_mount.mkdir(exist_ok=True)
    options = set(pyfuse3.default_options)
    options |= {"fsname=ember-imagefs", "ro", "allow_other", "default_permissions"}
    pyfuse3.init(ObjectFS(cache), str(daemon.fuse_mount), options)
    (root / PID_NAME).write_text(str(os.getpid()))
    try:
        trio.run(_main, daemon)
    finally:
        pyfuse3.close(unmount=True)
        daemon.unmount_all()
        (root / PID_NAME).unlink(missing_ok=True)
        (root / SOCKET_NAME).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
