"""Several containers opening the same files of a new image at once, while its first start
records what it reads: every open finds its file (the host's cache, driven from many threads,
and a real daemon serving real overlay mounts)."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import threading
from pathlib import Path

import pytest

from ember.container import overlay
from ember.errors import NotFoundError
from ember.imagefs import cache as cache_module
from ember.imagefs import content, index, manifest
from ember.imagefs.cache import ImageCache
from ember.imagefs.client import ImageFSClient, stop_daemon
from ember.imagefs.index import ContentIndex
from ember.imagefs.metadata import build_metadata_image
from ember.imagefs.pack import PACK_LIMIT, pack_tree
from ember.imagefs.store import LocalChunkStore

READERS = 6  # containers starting together


def make_tree(root: Path, packages: int = 6, modules: int = 30, libraries: int = 3) -> Path:
    """A Python-like tree: packages of small modules (packed into shared chunks), each with a
    few extension modules larger than the pack limit (a chunk of their own each)."""
    rng = random.Random(7)
    for number in range(packages):
        package = root / f"pkg{number}"
        package.mkdir(parents=True)
        for module in range(modules):
            (package / f"m{module}.py").write_bytes(rng.randbytes(rng.randint(100, 8000)))
        for library in range(libraries):
            size = rng.randint(PACK_LIMIT + 1, 900 << 10)
            (package / f"_ext{library}.so").write_bytes(rng.randbytes(size))
    return root


def publish_tree(
    tree: Path, store: LocalChunkStore, metadata: bool = False
) -> tuple[str, dict[str, bytes]]:
    """Store the tree as an image (with its erofs metadata image if `metadata`); returns the
    image id and each file's content by path."""
    built, _ = pack_tree(tree, store)
    image_id = manifest.image_id_of(built.to_bytes())
    if metadata:
        output = tree.parent / "meta.erofs"
        build_metadata_image(built, output, tree.parent / "stubs")
        store.put(manifest.metadata_key(image_id), content.compress(output.read_bytes()))
    index.save(store, image_id, ContentIndex.from_manifest(built))
    manifest.save(store, built)
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    return image_id, {str(p.relative_to(tree)): p.read_bytes() for p in files}


def test_opens_of_the_same_files_at_once_while_recording_all_find_them(tmp_path) -> None:
    store = LocalChunkStore(tmp_path / "store")
    image_id, files = publish_tree(make_tree(tmp_path / "tree"), store)
    wanted = [content.digest(data) for data in files.values()]  # in path order, as imports go
    cache = ImageCache(tmp_path / "cache", store, 1 << 30)
    cache.load_image(image_id)
    cache.start_recording(image_id)
    together = threading.Barrier(READERS)
    failures: list[str] = []

    def container() -> None:
        for digest in wanted:
            together.wait()  # each file opened by every container at the same moment
            try:
                opened = cache.ensure_object(digest).read_bytes()
            except NotFoundError as error:
                failures.append(str(error))
                continue
            if content.digest(opened) != digest:
                failures.append(f"{digest}: wrong content")

    threads = [threading.Thread(target=container) for _ in range(READERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, f"{len(failures)} of {len(wanted) * READERS} opens failed: {failures[:3]}"
    cache.stop_recording(image_id)
    assert not any(cache.staged.iterdir())


def test_a_small_file_staged_as_the_recording_ends_moves_into_the_object_directory(
    tmp_path, monkeypatch
) -> None:
    store = LocalChunkStore(tmp_path / "store")
    image_id, files = publish_tree(make_tree(tmp_path / "tree", packages=1, libraries=0), store)
    cache = ImageCache(tmp_path / "cache", store, 1 << 30)
    cache.load_image(image_id)
    cache.start_recording(image_id)
    write = cache_module._write_atomic

    def write_and_end_the_recording(path: str, data: bytes | memoryview) -> int:
        written = write(path, data)
        if path.startswith(f"{cache.staged}/") and cache.reads.active:
            cache.stop_recording(image_id)  # the first file of the chunk was just staged
        return written

    monkeypatch.setattr(cache_module, "_write_atomic", write_and_end_the_recording)
    digests = [content.digest(data) for data in files.values()]
    cache.ensure_object(digests[-1])  # fetches the chunk holding them all
    assert not any(cache.staged.iterdir())
    assert all(cache.object_file(digest).exists() for digest in digests)


def _can_mount() -> bool:
    return (
        os.geteuid() == 0 and os.path.exists("/dev/fuse") and shutil.which("mkfs.erofs") is not None
    )


@pytest.mark.skipif(not _can_mount(), reason="mounts FUSE, erofs and overlays: needs root")
def test_containers_starting_a_new_image_together_all_open_every_file(tmp_path) -> None:
    """The host's daemon, a new image no start has recorded, and one overlay per container as
    the worker mounts it: the containers read every file at once, in the same order (as the
    imports of one program do), while the first start records."""
    store = LocalChunkStore(tmp_path / "store")
    image_id, files = publish_tree(make_tree(tmp_path / "tree"), store, metadata=True)
    client = ImageFSClient(tmp_path / "imagefs")
    roots: list[Path] = []
    try:
        asyncio.run(client.ensure_daemon(store.url, 1 << 30))
        prepared = asyncio.run(client.prepare(image_id, records=True))
        assert not prepared.recorded  # this start records
        for number in range(READERS):
            layers = tmp_path / f"container{number}"
            upper, work, root = layers / "upper", layers / "work", layers / "root"
            for directory in (upper, work, root):
                directory.mkdir(parents=True)
            overlay.mount_overlay(
                prepared.metadata, upper, work, root, data_layers=prepared.data_layers
            )
            roots.append(root)
        together = threading.Barrier(READERS)
        failures: list[str] = []

        def container(root: Path) -> None:
            together.wait()
            for path, expected in files.items():
                try:
                    if (root / path).read_bytes() != expected:
                        failures.append(f"{path}: wrong content")
                except OSError as error:
                    failures.append(f"{path}: {error.strerror}")

        threads = [threading.Thread(target=container, args=(root,)) for root in roots]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        total = len(files) * READERS
        assert not failures, f"{len(failures)} of {total} opens failed: {failures[:3]}"
        # The opens reached the daemon and were recorded: the host had none of the files.
        assert asyncio.run(client.record(image_id, prepared.since)) >= len(files)
    finally:
        for root in roots:
            overlay.unmount(root)
        stop_daemon(client.root)
