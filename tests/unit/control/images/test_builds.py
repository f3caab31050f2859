"""Deleting an image while another builds: the chunk collection and the build take turns, so
the new image keeps every chunk it names.

The worker is played by the test: it takes the build order from the worker's queue, packs a
small tree into the chunk store as a build container's result would be, and reports."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

from ember.control.clock import FakeClock
from ember.control.images.builds import ImageBuilds
from ember.control.scheduler.cluster import Cluster
from ember.control.store import ImageRecord, Store
from ember.imagefs import content, manifest
from ember.imagefs.pack import pack_tree
from ember.imagefs.store import LocalChunkStore
from ember.proto import api_pb2

SHARED = b"in both images " * 1000


class PausingStore(LocalChunkStore):
    """Its listing of chunks, the collection's first look at them, waits until told to go on."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listing = threading.Event()
        self.go_on = threading.Event()

    def list(self, prefix: str) -> Iterator[str]:
        if prefix == "chunks/":
            self.listing.set()
            self.go_on.wait(30)
        return super().list(prefix)


def packed(tree: Path, files: dict[str, bytes], chunks: LocalChunkStore) -> str:
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    image, _ = pack_tree(tree, chunks)
    return manifest.save(chunks, image)


async def play_worker(
    orders: asyncio.Queue[api_pb2.WorkerOrder],
    builds: ImageBuilds,
    tree: Path,
    chunks: LocalChunkStore,
) -> None:
    order = await orders.get()
    image_id = await asyncio.to_thread(packed, tree, {"shared": SHARED}, chunks)
    report = api_pb2.BuildReportRequest(
        build_id=order.build.build_id, done=True, image_id=image_id, size_bytes=1, files=1
    )
    builds.report(report)


async def test_a_deletion_running_while_an_image_builds_leaves_it_every_chunk(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    chunks = PausingStore(tmp_path / "chunks")
    old = packed(tmp_path / "old", {"shared": SHARED, "own": b"only the old image's"}, chunks)
    await store.images.add(ImageRecord(old, "", "old", 1, 2, clock.now()), "key-of-old")
    cluster = Cluster()
    cluster.register_worker("wk-1", "host", 2.0, 1024, clock.now())
    builds = ImageBuilds(store, cluster, chunks, clock)

    deleting = asyncio.create_task(builds.delete(old, in_use=set()))
    await asyncio.to_thread(chunks.listing.wait, 10)  # the collection has begun
    playing = asyncio.create_task(
        play_worker(cluster.orders("wk-1"), builds, tmp_path / "new", chunks)
    )
    step = api_pb2.ImageStep(kind="base", python_version="3.11")
    building = asyncio.create_task(_events(builds.build([step])))
    # Unchecked, the build ends here, its chunk found in the store and not stored again...
    await asyncio.wait([building], timeout=1.0)
    chunks.go_on.set()  # ...and the collection, which never heard of it, goes on
    assert await deleting >= 1  # the old image's own chunk, at least
    events = await asyncio.wait_for(building, 30)
    await playing
    new = events[-1].built.image_id
    assert new != old
    for chunk in manifest.load(chunks, new).chunks():
        assert chunks.exists(content.chunk_key(chunk)), chunk


async def _events(stream) -> list[api_pb2.ImageBuildEvent]:
    return [event async for event in stream]
