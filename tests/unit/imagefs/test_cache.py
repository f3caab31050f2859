"""The host cache: lazy fetches by chunk, verification, one fetch per chunk, LRU, prefetch."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from ember.imagefs import content, index, manifest
from ember.imagefs.cache import ImageCache
from ember.imagefs.content import CHUNK_SIZE, CorruptChunkError
from ember.imagefs.index import ContentIndex
from ember.imagefs.pack import pack_tree
from ember.imagefs.recording import Read, Recorded, RecordedObject, RecordedPiece
from ember.imagefs.store import LocalChunkStore


class CountingStore(LocalChunkStore):
    """A local store that counts gets and can corrupt the next `corrupt` chunk reads."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gets: list[str] = []
        self.corrupt = 0
        self._lock = threading.Lock()

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        data = super().get(key, start, length)
        with self._lock:
            self.gets.append(key)
            if key.startswith("chunks/") and self.corrupt > 0:
                self.corrupt -= 1
                return data[:-1] + bytes([data[-1] ^ 1])
        return data


@pytest.fixture
def image(tmp_path: Path) -> tuple[CountingStore, str, Path]:
    tree = tmp_path / "tree"
    (tree / "lib").mkdir(parents=True)
    for i in range(20):
        (tree / f"lib/small{i}.py").write_text(f"x = {i}\n" * 50)
    (tree / "lib/big.so").write_bytes(os.urandom(4 * CHUNK_SIZE))
    store = CountingStore(tmp_path / "store")
    built, _ = pack_tree(tree, store)
    image_id = manifest.save(store, built)
    index.save(store, image_id, ContentIndex.from_manifest(built))  # as a build publishes it
    return store, image_id, tree


def digest_of(tree: Path, path: str) -> str:
    return content.digest((tree / path).read_bytes())


def new_cache(tmp_path: Path, store: CountingStore, limit: int = 1 << 30) -> ImageCache:
    return ImageCache(tmp_path / "cache", store, limit)


def chunk_gets(store: CountingStore) -> int:
    return sum(1 for key in store.gets if key.startswith("chunks/"))


def test_opening_a_small_file_fetches_its_pack_and_every_object_in_it(image, tmp_path) -> None:
    store, image_id, tree = image
    cache = new_cache(tmp_path, store)
    cache.load_image(image_id)
    path = cache.ensure_object(digest_of(tree, "lib/small3.py"))
    assert path.read_bytes() == (tree / "lib/small3.py").read_bytes()
    assert chunk_gets(store) == 1
    # Its neighbours came with it: no more fetches.
    cache.ensure_object(digest_of(tree, "lib/small17.py"))
    assert chunk_gets(store) == 1


def test_an_image_is_loaded_from_its_content_index_without_its_manifest(image, tmp_path) -> None:
    store, image_id, tree = image
    cache = new_cache(tmp_path, store)
    assert cache.load_image(image_id).file(digest_of(tree, "lib/small3.py")) is not None
    assert store.gets == [index.index_key(image_id)]
    assert cache.cached_images() == [image_id]
    assert new_cache(tmp_path, store).load_image(image_id)  # a restarted daemon: from its disk
    assert store.gets == [index.index_key(image_id)]


@pytest.mark.parametrize("stored", ["none", "damaged"])
def test_an_image_without_a_sound_index_is_indexed_from_its_manifest_for_every_later_host(
    image, tmp_path, stored
) -> None:
    store, image_id, tree = image
    key = index.index_key(image_id)
    sound = store.get(key)
    store.delete(key)
    if stored == "damaged":
        store.put(key, sound[:-20])
    cache = new_cache(tmp_path, store)
    cache.load_image(image_id)
    assert manifest.manifest_key(image_id) in store.gets
    assert index.from_stored(store.get(key)).files == index.from_stored(sound).files
    assert (
        cache.ensure_object(digest_of(tree, "lib/small3.py")).read_bytes()
        == (tree / "lib/small3.py").read_bytes()
    )


def test_reading_a_page_of_a_large_file_fetches_one_chunk(image, tmp_path) -> None:
    store, image_id, tree = image
    cache = new_cache(tmp_path, store)
    cache.load_image(image_id)
    digest = digest_of(tree, "lib/big.so")
    offset = 2 * CHUNK_SIZE + 5000
    assert cache.read(digest, offset, 4096) == (tree / "lib/big.so").read_bytes()[offset:][:4096]
    assert chunk_gets(store) == 1
    assert not cache.object_file(digest).exists()  # still partial
    whole = cache.read(digest, 0, 4 * CHUNK_SIZE)
    assert whole == (tree / "lib/big.so").read_bytes()
    assert chunk_gets(store) == 4
    assert cache.object_file(digest).read_bytes() == whole  # complete: promoted


def test_each_piece_of_a_large_file_placed_is_told_and_listed(image, tmp_path) -> None:
    store, image_id, tree = image
    cache = new_cache(tmp_path, store)
    cache.load_image(image_id)
    told: list[tuple[str, int, bytes]] = []
    cache.on_extent_placed = lambda digest, offset, data: told.append((digest, offset, bytes(data)))
    big = digest_of(tree, "lib/big.so")
    cache.read(big, 2 * CHUNK_SIZE + 5, 10)
    content_of_big = (tree / "lib/big.so").read_bytes()
    assert told == [(big, 2 * CHUNK_SIZE, content_of_big[2 * CHUNK_SIZE : 3 * CHUNK_SIZE])]
    assert cache.placed_ranges(big) == [(2 * CHUNK_SIZE, CHUNK_SIZE)]
    cache.read(big, 0, 4 * CHUNK_SIZE)  # the rest: the file is whole, a local object
    assert [offset for _, offset, _ in told] == [2 * CHUNK_SIZE, 0, CHUNK_SIZE, 3 * CHUNK_SIZE]
    assert cache.placed_ranges(big) == []


def test_a_local_read_serves_only_what_the_host_has(image, tmp_path) -> None:
    store, image_id, tree = image
    cache = new_cache(tmp_path, store)
    cache.load_image(image_id)
    digest = digest_of(tree, "lib/big.so")
    expected = (tree / "lib/big.so").read_bytes()
    assert cache.read_local(digest, CHUNK_SIZE, 4096) is None  # nothing here yet
    cache.read(digest, CHUNK_SIZE, 4096)
    assert chunk_gets(store) == 1
    assert cache.read_local(digest, CHUNK_SIZE + 10, 100) == expected[CHUNK_SIZE + 10 :][:100]
    # A range across into the next chunk needs that one too; a local read never fetches it.
    assert cache.read_local(digest, 2 * CHUNK_SIZE - 10, 100) is None
    assert chunk_gets(store) == 1


def test_a_local_object_is_found_only_if_the_host_has_it(image, tmp_path) -> None:
    store, image_id, tree = image
    cache = new_cache(tmp_path, store)
    cache.load_image(image_id)
    small3 = digest_of(tree, "lib/small3.py")
    assert cache.local_object(small3) is None and chunk_gets(store) == 0  # never fetches
    cache.ensure_object(small3)
    path = cache.local_object(small3)
    assert path is not None
    assert Path(path).read_bytes() == (tree / "lib/small3.py").read_bytes()


def test_concurrent_readers_of_a_chunk_fetch_it_once(image, tmp_path) -> None:
    store, image_id, tree = image
    cache = new_cache(tmp_path, store)
    cache.load_image(image_id)
    digest = digest_of(tree, "lib/big.so")
    with ThreadPoolExecutor(16) as pool:
        reads = list(pool.map(lambda _: cache.read(digest, 100, 1000), range(64)))
    assert len(set(reads)) == 1
    assert chunk_gets(store) == 1


def test_a_corrupted_chunk_is_fetched_again_and_never_served(image, tmp_path) -> None:
    store, image_id, tree = image
    cache = new_cache(tmp_path, store)
    cache.load_image(image_id)
    store.corrupt = 1  # the first read comes back damaged, the second is fine
    path = cache.ensure_object(digest_of(tree, "lib/small1.py"))
    assert path.read_bytes() == (tree / "lib/small1.py").read_bytes()
    assert cache.stats.corrupt_chunks == 1 and chunk_gets(store) == 2

    store.corrupt = 100  # damaged for good: an error, and nothing written
    with pytest.raises(CorruptChunkError):
        cache.read(digest_of(tree, "lib/big.so"), 0, 10)
    assert not cache.object_file(digest_of(tree, "lib/big.so")).exists()
    assert list(cache.partial.iterdir()) == []


def test_the_cache_stays_under_its_limit_dropping_least_recently_used(image, tmp_path) -> None:
    store, image_id, tree = image
    limit = 4 * CHUNK_SIZE + 1000  # big.so and a few small files
    cache = new_cache(tmp_path, store, limit=limit)
    cache.load_image(image_id)
    small = cache.ensure_object(digest_of(tree, "lib/small0.py"))  # all 20 arrive together
    big = digest_of(tree, "lib/big.so")
    cache.read(big, 0, 4 * CHUNK_SIZE)
    assert cache.used_bytes <= limit
    assert not small.exists()  # the least recently used went first
    assert cache.object_file(big).exists()
    assert cache.stats.evicted_objects > 0
    # An evicted object is fetched again when wanted.
    assert cache.ensure_object(digest_of(tree, "lib/small0.py")).exists()


def test_a_first_start_records_what_it_read_and_another_host_prefetches_exactly_that(
    image, tmp_path
) -> None:
    store, image_id, tree = image
    big, expected = digest_of(tree, "lib/big.so"), (tree / "lib/big.so").read_bytes()
    first = ImageCache(tmp_path / "host1", store, 1 << 30)
    loaded = first.load_image(image_id)
    first.start_recording(image_id)
    small5 = digest_of(tree, "lib/small5.py")
    first.reads.note_open(small5)  # as the FUSE server tells it
    first.ensure_object(small5)
    # Reads of a large file, as the FUSE server tells them: a page, the two after it (read with
    # a page again), a few bytes of the last chunk.
    for offset, size in [(CHUNK_SIZE, 4096), (CHUNK_SIZE, 12288), (3 * CHUNK_SIZE + 8192, 100)]:
        first.reads.note_read(big, offset, size)
        first.read(big, offset, size)
    reads = first.reads.since(0.0, loaded)
    assert reads == [
        small5,  # the small file opened, not the chunk it came in
        Read(big, CHUNK_SIZE, 4096),
        Read(big, CHUNK_SIZE, 12288),
        Read(big, 3 * CHUNK_SIZE + 8192, 100),
    ]
    first.save_reads(image_id, reads)
    first.stop_recording(image_id)
    first.reads.note_read(big, 0, 4096)  # no longer recording: not noted
    assert first.reads.since(0.0, loaded) == []

    second = ImageCache(tmp_path / "host2", store, 1 << 30)
    recorded = second.recorded_reads(image_id)
    assert isinstance(recorded[0], RecordedObject) and recorded[0].object == small5
    # Each page read once, in whole pages, the ones that follow each other in one piece.
    assert [(r.offset, r.length) for r in recorded[1:] if isinstance(r, RecordedPiece)] == [
        (CHUNK_SIZE, 12288),
        (3 * CHUNK_SIZE + 8192, 4096),
    ]
    store.gets.clear()
    second.prefetch(image_id, recorded, indexed(second.load_image(image_id)))
    # One ranged read of the pack brought them all, and no chunk was read on its own.
    assert store.gets == [index.index_key(image_id), manifest.prefetch_key(image_id)]
    assert second.ensure_object(small5).read_bytes() == (tree / "lib/small5.py").read_bytes()
    assert second.read(big, CHUNK_SIZE + 100, 12000) == expected[CHUNK_SIZE + 100 :][:12000]
    assert (
        second.read_local(big, 3 * CHUNK_SIZE + 8192, 4096)
        == expected[3 * CHUNK_SIZE + 8192 :][:4096]
    )
    assert chunk_gets(store) == 0
    # Exactly those: the page after them was never read, so it is not here until read.
    assert second.read_local(big, CHUNK_SIZE + 12288, 4096) is None
    assert second.read(big, CHUNK_SIZE + 12288, 4096) == expected[CHUNK_SIZE + 12288 :][:4096]
    assert not second.has_object(digest_of(tree, "lib/small17.py"))  # a neighbour never opened
    assert second.ensure_object(digest_of(tree, "lib/small17.py")).exists()
    assert chunk_gets(store) == 2
    second.prefetch(image_id, recorded, indexed(None))  # the host has it all: nothing fetched
    assert chunk_gets(store) == 2 and store.gets.count(manifest.prefetch_key(image_id)) == 1


def test_while_recording_small_files_wait_outside_the_object_directory_until_opened(
    image, tmp_path
) -> None:
    store, image_id, tree = image
    cache = new_cache(tmp_path, store)
    cache.load_image(image_id)
    cache.start_recording(image_id)
    small3, small17 = digest_of(tree, "lib/small3.py"), digest_of(tree, "lib/small17.py")
    assert cache.ensure_object(small3).read_bytes() == (tree / "lib/small3.py").read_bytes()
    # Its neighbours came with it, but not into the object directory (overlay's layer): their
    # opens must reach the FUSE server to be noted.
    assert not cache.object_file(small17).exists()
    assert cache.ensure_object(small17).exists() and chunk_gets(store) == 1
    cache.stop_recording(image_id)  # the rest move in
    assert cache.object_file(digest_of(tree, "lib/small9.py")).exists()
    assert not any(cache.staged.iterdir()) and chunk_gets(store) == 1


def test_while_another_start_records_prefetched_small_files_wait_until_opened_too(
    image, tmp_path
) -> None:
    """Images share files (the interpreter's): one an image's prefetch places while another
    image records must still reach the FUSE server when the recording start opens it."""
    store, image_id, tree = image
    recorded = recording_of(image, tmp_path)
    cache = new_cache(tmp_path, store)
    cache.start_recording("im-another")
    cache.prefetch(image_id, recorded, indexed(cache.load_image(image_id)))
    small5 = digest_of(tree, "lib/small5.py")
    assert not cache.object_file(small5).exists()
    assert cache.ensure_object(small5).read_bytes() == (tree / "lib/small5.py").read_bytes()
    assert chunk_gets(store) == 0  # it was there, staged: opened, it moved in


def test_a_large_file_whose_every_page_was_prefetched_is_a_local_object(image, tmp_path) -> None:
    store, image_id, tree = image
    big = digest_of(tree, "lib/big.so")
    first = ImageCache(tmp_path / "host1", store, 1 << 30)
    loaded = first.load_image(image_id)
    first.start_recording(image_id)
    for offset in range(0, 4 * CHUNK_SIZE, 128 << 10):  # read whole, as the kernel reads ahead
        first.reads.note_read(big, offset, 128 << 10)
    first.save_reads(image_id, first.reads.since(0.0, loaded))
    second = new_cache(tmp_path, store)
    recorded = second.recorded_reads(image_id)
    second.prefetch(image_id, recorded, indexed(second.load_image(image_id)))
    # No chunk was placed whole, yet every page is here: the file is a local object.
    assert second.has_object(big) and second.placed_ranges(big) == []
    assert second.object_file(big).read_bytes() == (tree / "lib/big.so").read_bytes()


def test_a_piece_damaged_in_the_pack_is_never_served(image, tmp_path) -> None:
    store, image_id, tree = image
    recorded = recording_of(image, tmp_path)
    piece = next(r for r in recorded if isinstance(r, RecordedPiece))
    pack = store.root / manifest.prefetch_key(image_id)
    damaged = bytearray(pack.read_bytes())
    damaged[piece.start + piece.size // 2] ^= 1
    pack.write_bytes(damaged)
    cache = new_cache(tmp_path, store)
    cache.prefetch(image_id, recorded, indexed(cache.load_image(image_id)))
    assert cache.stats.corrupt_chunks == 1
    big = digest_of(tree, "lib/big.so")
    assert cache.read_local(big, piece.offset, piece.length) is None
    # Read, its bytes come from their chunk in the store.
    data = cache.read(big, piece.offset, piece.length)
    assert data == (tree / "lib/big.so").read_bytes()[piece.offset :][: piece.length]
    assert chunk_gets(store) == 1


def test_a_recording_of_an_earlier_format_counts_as_none(image, tmp_path) -> None:
    store, image_id, _ = image
    store.put(manifest.reads_key(image_id), b'["' + b"ab" * 32 + b'"]')  # chunks, no pack
    assert new_cache(tmp_path, store).recorded_reads(image_id) is None
    store.delete(manifest.reads_key(image_id))
    store.put(manifest.reads_key(image_id), b'{"format": 2, "chunks": []}')  # whole chunks only
    assert new_cache(tmp_path, store).recorded_reads(image_id) is None


def test_a_prefetch_fetches_while_the_manifest_is_indexed_and_places_once_it_is(
    image, tmp_path
) -> None:
    store, image_id, tree = image
    recorded = recording_of(image, tmp_path)
    cache = new_cache(tmp_path, store)
    waiting: Future[object] = Future()
    with ThreadPoolExecutor(1) as pool:
        prefetch = pool.submit(cache.prefetch, image_id, recorded, waiting)
        deadline = time.monotonic() + 10
        while cache.stats.chunks_fetched < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cache.stats.chunks_fetched == 2  # fetched and checked with no index...
        assert not cache.object_file(digest_of(tree, "lib/small5.py")).exists()  # ...not placed
        waiting.set_result(cache.load_image(image_id))
        prefetch.result(timeout=10)
    assert cache.object_file(digest_of(tree, "lib/small5.py")).exists()
    cache.read(digest_of(tree, "lib/big.so"), CHUNK_SIZE, 10)
    assert cache.stats.chunks_fetched == 2 and chunk_gets(store) == 0


def test_an_object_damaged_in_the_pack_is_never_served(image, tmp_path) -> None:
    store, image_id, tree = image
    recorded = recording_of(image, tmp_path)
    assert isinstance(recorded[0], RecordedObject)
    pack = store.root / manifest.prefetch_key(image_id)
    damaged = bytearray(pack.read_bytes())
    damaged[recorded[0].start + recorded[0].size // 2] ^= 1
    pack.write_bytes(damaged)
    cache = new_cache(tmp_path, store)
    cache.prefetch(image_id, recorded, indexed(cache.load_image(image_id)))
    assert cache.stats.corrupt_chunks == 1
    small5 = digest_of(tree, "lib/small5.py")
    assert not cache.has_object(small5)
    # Opened, it comes from its chunk in the store.
    assert cache.ensure_object(small5).read_bytes() == (tree / "lib/small5.py").read_bytes()
    assert chunk_gets(store) == 1


def test_a_prefetch_whose_image_cannot_be_indexed_places_nothing_and_holds_nothing(
    image, tmp_path
) -> None:
    store, image_id, tree = image
    recorded = recording_of(image, tmp_path)
    cache = new_cache(tmp_path, store)
    failed: Future[object] = Future()
    failed.set_exception(content.CorruptChunkError("the manifest is corrupted"))
    with pytest.raises(content.CorruptChunkError):
        cache.prefetch(image_id, recorded, failed)
    assert cache.used_bytes == 0
    cache.load_image(image_id)  # a later read fetches the chunk itself, nothing left waiting
    assert cache.ensure_object(digest_of(tree, "lib/small5.py")).exists()


def recording_of(image: tuple[CountingStore, str, Path], tmp_path: Path) -> list[Recorded]:
    """What a first start that read small5.py and a page of big.so records (on another host)."""
    store, image_id, tree = image
    first = ImageCache(tmp_path / "recorder", store, 1 << 30)
    loaded = first.load_image(image_id)
    first.start_recording(image_id)
    first.reads.note_open(digest_of(tree, "lib/small5.py"))
    first.ensure_object(digest_of(tree, "lib/small5.py"))
    first.reads.note_read(digest_of(tree, "lib/big.so"), CHUNK_SIZE, 10)
    first.read(digest_of(tree, "lib/big.so"), CHUNK_SIZE, 10)
    first.save_reads(image_id, first.reads.since(0.0, loaded))
    store.gets.clear()
    return first.recorded_reads(image_id)


def indexed(loaded: object) -> Future[object]:
    done: Future[object] = Future()
    done.set_result(loaded)
    return done


def test_objects_survive_a_restart_and_partial_files_do_not(image, tmp_path) -> None:
    store, image_id, tree = image
    cache = new_cache(tmp_path, store)
    cache.load_image(image_id)
    small = cache.ensure_object(digest_of(tree, "lib/small2.py"))
    cache.read(digest_of(tree, "lib/big.so"), 0, 10)
    again = new_cache(tmp_path, store)
    assert small.exists() and again.used_bytes == cache.used_bytes
    assert list(again.partial.iterdir()) == []
    assert again.cached_images() == [image_id]


def test_garbage_collection_drops_images_and_objects_no_kept_image_uses(image, tmp_path) -> None:
    store, image_id, tree = image
    cache = new_cache(tmp_path, store)
    cache.load_image(image_id)
    small = cache.ensure_object(digest_of(tree, "lib/small2.py"))
    assert cache.collect_garbage({image_id}) == 0 and small.exists()
    removed = cache.collect_garbage(set())
    assert removed > 0 and not small.exists()
    assert cache.cached_images() == [] and cache.used_bytes == 0
