"""Image builds: walk a chain of steps, reuse each one the cache knows, build the rest on a worker.

A step's cache key is the digest of its parent's key and its own definition (local files and
build functions enter by the digest of their content), so a changed step and every step after it
build again while the steps before it are cache hits. `force_build` on a step skips the cache
for it and every step after it.

Build output streams from the worker (`BuildReport`) to the caller as it comes. A failed step
records nothing: the next build of the same chain tries it again.

Deleting an image removes the chunks no other image uses. That and building exclude each other:
a build stores its chunks (or finds them stored already and leaves them) before its image is
recorded, so a collection running meanwhile would take chunks the new image needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

from ember import errors
from ember.control.clock import Clock
from ember.control.ids import new_id
from ember.control.scheduler.cluster import Cluster
from ember.control.store import ImageRecord, Store
from ember.imagefs import content, index, manifest
from ember.imagefs.store import ChunkStore
from ember.proto import api_pb2

log = logging.getLogger(__name__)

# Bump when what a step builds changes for the same definition, so old cache entries miss.
BUILD_FORMAT = 1

_WORKER_CHECK_S = 5.0


def cache_key(parent_key: str, step: api_pb2.ImageStep) -> str:
    definition = {
        "format": BUILD_FORMAT,
        "parent": parent_key,
        "kind": step.kind,
        "python": step.python_version,
        "reference": step.reference,
        "commands": list(step.commands),
        "env": dict(sorted(step.env.items())),
        "workdir": step.workdir,
        "target": step.target,
        "content": step.content_digest,
    }
    return content.digest(json.dumps(definition, sort_keys=True).encode())


def describe_step(step: api_pb2.ImageStep) -> str:
    match step.kind:
        case "base":
            return f"debian_slim(python_version={step.python_version or '3.11'!r})"
        case "registry":
            return f"from_registry({step.reference!r})"
        case "run":
            return "RUN " + " && ".join(step.commands)
        case "copy":
            return f"COPY local files -> {step.target}"
        case "function":
            return "run_function"
        case "config":
            parts = [f"ENV {k}={v}" for k, v in sorted(step.env.items())]
            parts += [f"WORKDIR {step.workdir}"] if step.workdir else []
            return " ".join(parts) or "config"
    return step.kind


class ImageBuilds:
    def __init__(self, store: Store, cluster: Cluster, chunks: ChunkStore, clock: Clock) -> None:
        self._store = store
        self._cluster = cluster
        self._chunks = chunks
        self._clock = clock
        self._reports: dict[str, asyncio.Queue[api_pb2.BuildReportRequest]] = {}
        self._locks: dict[str, asyncio.Lock] = {}  # one build per cache key at a time
        self._turns = asyncio.Condition()  # builds, or one collection of chunks, at a time
        self._building = 0
        self._collecting = False

    async def build(self, steps: list[api_pb2.ImageStep]) -> AsyncIterator[api_pb2.ImageBuildEvent]:
        if not steps or steps[0].kind not in ("base", "registry"):
            raise errors.InvalidError("an image starts with debian_slim() or from_registry()")
        parent_key = parent_id = ""
        forced = False
        for number, step in enumerate(steps, 1):
            forced = forced or step.force_build
            key = cache_key(parent_key, step)
            description = describe_step(step)
            async with self._locks.setdefault(key, asyncio.Lock()):
                image_id = None if forced else await self._cached(key)
                yield api_pb2.ImageBuildEvent(
                    step_started=f"[{number}/{len(steps)}] {description}",
                    cached=image_id is not None,
                )
                if image_id is None and step.kind in ("copy", "function") and not step.blob_id:
                    yield api_pb2.ImageBuildEvent(needs_blobs=True)
                    return
                if image_id is None:
                    report: list[api_pb2.BuildReportRequest] = []
                    async with self._build_turn():
                        async for event in self._build_on_worker(parent_id, step, report):
                            yield event
                        done = report[0]
                        if done.error:
                            raise errors.ExecutionError(
                                f"Image build failed at step {number} ({description}).\n"
                                f"{done.error}"
                            )
                        image_id = done.image_id
                        record = ImageRecord(
                            image_id,
                            parent_id,
                            description,
                            done.size_bytes,
                            done.files,
                            self._clock.now(),
                        )
                        await self._store.images.add(record, key)
            parent_key, parent_id = key, image_id
        record = await self._store.images.get(parent_id)
        assert record is not None
        yield api_pb2.ImageBuildEvent(built=_summary(record))

    @contextlib.asynccontextmanager
    async def _build_turn(self) -> AsyncIterator[None]:
        """A step builds once no collection of chunks runs, and none starts until it is
        recorded."""
        async with self._turns:
            await self._turns.wait_for(lambda: not self._collecting)
            self._building += 1
        try:
            yield
        finally:
            async with self._turns:
                self._building -= 1
                self._turns.notify_all()

    async def _cached(self, key: str) -> str | None:
        image_id = await self._store.images.cached(key)
        if image_id is None:
            return None
        # The chunk store may have lost it (deleted by hand, another store): build it again.
        exists = await asyncio.to_thread(self._chunks.exists, manifest.manifest_key(image_id))
        return image_id if exists else None

    async def _build_on_worker(
        self, parent_id: str, step: api_pb2.ImageStep, result: list[api_pb2.BuildReportRequest]
    ) -> AsyncIterator[api_pb2.ImageBuildEvent]:
        worker_id = self._pick_worker()
        build_id = new_id("bd")
        reports = self._reports[build_id] = asyncio.Queue()
        try:
            order = api_pb2.BuildOrder(build_id=build_id, parent_image_id=parent_id, step=step)
            self._cluster.order(worker_id, api_pb2.WorkerOrder(build=order))
            while True:
                try:
                    report = await asyncio.wait_for(reports.get(), _WORKER_CHECK_S)
                except TimeoutError:
                    if worker_id not in self._cluster.workers:
                        raise errors.ExecutionError(
                            f"the worker building the image ({worker_id}) went away; try again"
                        ) from None
                    continue
                if report.output:
                    yield api_pb2.ImageBuildEvent(output=report.output)
                if report.done:
                    result.append(report)
                    return
        finally:
            del self._reports[build_id]

    def _pick_worker(self) -> str:
        workers = sorted(self._cluster.workers)
        if not workers:
            raise errors.ExecutionError("no worker is connected to build the image; start one")
        # The worker with the fewest containers: builds take CPU too.
        return min(workers, key=lambda w: (len(self._cluster.containers_on(w)), w))

    def report(self, report: api_pb2.BuildReportRequest) -> None:
        queue = self._reports.get(report.build_id)
        if queue is not None:  # else: the caller went away; the built image stays in the store
            queue.put_nowait(report)

    async def summaries(self) -> list[api_pb2.ImageInfo]:
        """Every built image's record."""
        return [_summary(record) for record in await self._store.images.list()]

    async def describe(self, image_id: str) -> tuple[api_pb2.ImageInfo, list[str]]:
        """An image's record and config (`info`), and the steps that built it, first first."""
        record = await self._store.images.get(image_id)
        if record is None:
            raise errors.NotFoundError(f"image {image_id!r} not found")
        steps, ancestor = [], record
        while ancestor is not None:
            steps.insert(0, ancestor.step)
            ancestor = (
                await self._store.images.get(ancestor.parent_id) if ancestor.parent_id else None
            )
        return await self.info(record), steps

    async def info(self, record: ImageRecord) -> api_pb2.ImageInfo:
        """The record with the image's config, read from its content index."""
        loaded, _ = await asyncio.to_thread(index.load, self._chunks, record.image_id)
        info = _summary(record)
        info.env_json = json.dumps(loaded.config.env)
        info.workdir = loaded.config.workdir
        return info

    async def delete(self, image_id: str, in_use: set[str]) -> int:
        """Forget an image and remove the chunks no other image uses; returns how many went.

        Chunks are kept while a step builds (a later deletion removes them): the build's chunks
        are stored before its image is recorded. A step that starts to build meanwhile waits
        for the collection to end."""
        if image_id in in_use:
            raise errors.InvalidError(
                f"image {image_id} is used by a running app's function; stop the app first"
            )
        if not await self._store.images.delete(image_id):
            raise errors.NotFoundError(f"image {image_id!r} not found")
        async with self._turns:
            if self._building or self._collecting:
                return 0
            self._collecting = True
        try:
            kept = [record.image_id for record in await self._store.images.list()]
            return await asyncio.to_thread(_collect_chunks, self._chunks, image_id, kept)
        finally:
            async with self._turns:
                self._collecting = False
                self._turns.notify_all()


def _summary(record: ImageRecord) -> api_pb2.ImageInfo:
    return api_pb2.ImageInfo(
        image_id=record.image_id,
        parent_id=record.parent_id,
        step=record.step,
        size_bytes=record.size_bytes,
        files=record.files,
        created_at=record.created_at,
    )


def _collect_chunks(chunks: ChunkStore, deleted: str, kept: list[str]) -> int:
    referenced: set[str] = set()
    for image_id in kept:
        try:
            referenced |= manifest.load(chunks, image_id).chunks()
        except errors.NotFoundError:
            continue
    removed = 0
    for key in list(chunks.list("chunks/")):
        if key.removeprefix("chunks/") not in referenced:
            chunks.delete(key)
            removed += 1
    for key in list(chunks.list(f"images/{deleted}/")):
        chunks.delete(key)
    return removed
