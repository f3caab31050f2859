"""A host's image cache: fetched content, image metadata, and what to fetch ahead of a start.

Layout under the cache root:

    objects/<d[:2]>/<d>   complete files by content digest: overlay's first data-only layer
    partial/<d>           large files being filled chunk by chunk (discarded on restart)
    staged/<d>            small files placed while a start records, until opened (discarded
                          on restart)
    images/<id>/          a cached image: its content index and its erofs metadata image

Content is fetched by chunk from the chunk store, checked against its digest (a corrupted chunk
is fetched again, never served), and written into place atomically. A chunk wanted by several
readers at once is fetched once. Every object a chunk holds is written when the chunk arrives:
small files share chunks in path order, so the neighbours of a file are usually wanted next.

The objects directory is bounded (`limit_bytes`): when it grows past the limit, the least
recently used objects go first. An evicted object that an open file still uses stays readable;
the next open fetches it again.

Every method blocks and is safe to call from many threads at once.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ember.errors import NotFoundError
from ember.imagefs import content, index, manifest, prefetch, recording
from ember.imagefs.content import CHUNK_SIZE, CorruptChunkError
from ember.imagefs.index import ChunkRef, ContentIndex, FileContent
from ember.imagefs.metadata import object_path
from ember.imagefs.recording import (
    PAGE,
    Read,
    ReadLog,
    Recorded,
    RecordedObject,
    RecordedPiece,
    object_key,
)
from ember.imagefs.store import ChunkStore

log = logging.getLogger(__name__)

FETCH_ATTEMPTS = 3
# Prefetching reads the pack in ranges of about PACK_RANGE_BYTES (stored bytes), PREFETCH_AHEAD
# at once, and checks and places what arrived on PREFETCH_WORKERS threads: more only take the
# cores the starting container needs (measured: 3 workers, 2 or 6 ranges ahead, 2 MiB ranges,
# all within noise).
PACK_RANGE_BYTES = 4 << 20
PREFETCH_AHEAD = 4
PREFETCH_WORKERS = 2
PACK_THREADS = 8  # reading the chunks a recording packs


@dataclass
class CacheStats:
    chunks_fetched: int = 0
    bytes_fetched: int = 0  # uncompressed bytes of fetched chunks
    bytes_transferred: int = 0  # as stored (compressed)
    corrupt_chunks: int = 0
    evicted_objects: int = 0


@dataclass(frozen=True)
class _Claimed:
    """A small file or a piece read from the pack, not yet checked, claimed until placed."""

    recorded: Recorded
    future: Future[None]
    packed: bytes  # as the pack holds it


class _Partial:
    """A large file being filled: which of its extents are in place (it is complete once all
    are), and which of its pages (an extent's, or a prefetched piece's)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.have: set[int] = set()
        self.pages = bytearray(-(-size // PAGE))  # 1 where the page is in place

    def mark(self, offset: int, length: int) -> None:
        """Bytes [offset, offset + length) are in place: every page they cover whole."""
        first, end = -(-offset // PAGE), offset + length
        last = len(self.pages) if end >= self.size else end // PAGE
        if last > first:
            self.pages[first:last] = b"\x01" * (last - first)

    def whole(self) -> bool:
        return self.pages.find(0) < 0

    def has(self, offset: int, length: int) -> bool:
        last = min(-(-(offset + length) // PAGE), len(self.pages))
        return self.pages.find(0, offset // PAGE, last) < 0

    def ranges(self) -> list[tuple[int, int]]:
        """The (offset, length) of each run of pages in place."""
        runs, first = [], self.pages.find(1)
        while first >= 0:
            end = self.pages.find(0, first)
            end = len(self.pages) if end < 0 else end
            runs.append((first * PAGE, min(end * PAGE, self.size) - first * PAGE))
            first = self.pages.find(1, end)
        return runs


class ImageCache:
    def __init__(self, root: Path, store: ChunkStore, limit_bytes: int) -> None:
        self.root = root
        self.store = store
        self.limit_bytes = limit_bytes
        self.objects = root / "objects"
        self.partial = root / "partial"
        self.staged = root / "staged"
        self.images = root / "images"
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._indexes: dict[str, ContentIndex] = {}  # loaded images, by id
        # The same, earliest loaded first, replaced whole (never changed) as images come and go:
        # lookups walk it without the lock while another thread loads an image.
        self._loaded: tuple[ContentIndex, ...] = ()
        self._inflight: dict[str, Future[None]] = {}
        self._partials: dict[str, _Partial] = {}
        self._usage: OrderedDict[str, int] = OrderedDict()  # object digest -> size, LRU first
        self._used_bytes = 0
        self.reads = ReadLog()  # while a start records, the FUSE server notes what it read
        # Small files placed in staged/ while recording, with their sizes. A staged file moves
        # into objects/ and into `_usage` in one step under the lock (`_unstage`): a reader
        # always finds it in one of the two.
        self._staged: dict[str, int] = {}
        self._claimed_pieces: dict[str, RecordedPiece] = {}  # by key, while a prefetch has them
        # Told (file digest, offset, bytes) each time part of a large file is placed, after it
        # is: the FUSE server hands it to the kernel's page cache when a container has the
        # file open. It must not block: the placing thread may hold a chunk others wait for.
        self.on_extent_placed: Callable[[str, int, memoryview], None] | None = None
        for directory in (self.objects, self.partial, self.staged, self.images):
            directory.mkdir(parents=True, exist_ok=True)
        for prefix in range(256):  # made once, not checked at every write
            (self.objects / f"{prefix:02x}").mkdir(exist_ok=True)
        self._discard_partials()
        self._scan_objects()

    # -- images --------------------------------------------------------------------------------

    def load_image(self, image_id: str) -> ContentIndex:
        """The image's content index, fetched once per host (made from its manifest where the
        store has none, or a damaged one, and stored for the next host)."""
        known = self._indexes.get(image_id)
        if known is not None:
            return known
        cached = self.images / image_id / "index"
        loaded = None
        if cached.is_file():
            with contextlib.suppress(CorruptChunkError):
                loaded = index.from_stored(cached.read_bytes())
        if loaded is None:
            loaded, blob = index.load(self.store, image_id)
            cached.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(cached, blob)
        with self._lock:
            if image_id not in self._indexes:
                self._indexes[image_id] = loaded
                self._loaded = (*self._loaded, loaded)
            return self._indexes[image_id]

    def metadata_image(self, image_id: str) -> Path:
        """The image's erofs metadata image on local disk, fetched if needed."""
        path = self.images / image_id / "meta.erofs"
        if not path.is_file():
            blob = self.store.get(manifest.metadata_key(image_id))
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, content.decompress(blob))
        return path

    def cached_images(self) -> list[str]:
        return sorted(p.name for p in self.images.iterdir() if (p / "index").is_file())

    def file(self, file_digest: str) -> FileContent | None:
        """The content of that digest in the earliest loaded image that has it."""
        for loaded in self._loaded:
            found = loaded.file(file_digest)
            if found is not None:
                return found
        return None

    def _refs(self, chunk_digest: str) -> list[ChunkRef]:
        """Where the chunk's bytes go, in the earliest loaded image that uses it."""
        for loaded in self._loaded:
            refs = loaded.refs(chunk_digest)
            if refs:
                return refs
        return []

    # -- objects -------------------------------------------------------------------------------

    def object_file(self, file_digest: str) -> Path:
        return self.objects / object_path(file_digest)

    def has_object(self, file_digest: str) -> bool:
        """Whether the object is in the object directory (known without asking the disk: this
        process writes and removes every object there)."""
        return file_digest in self._usage

    def local_object(self, file_digest: str) -> str | None:
        """The path of the file's complete local copy if there is one, else None (it never
        fetches nor moves anything, so a caller that must not block can try it first)."""
        if not self.has_object(file_digest):
            return None
        self._touch(file_digest)
        return f"{self.objects}/{object_path(file_digest)}"

    def ensure_object(self, file_digest: str) -> Path:
        """The complete local copy of a file's content, fetching every chunk it lacks (unless a
        prefetch is about to place it)."""
        local = self.local_object(file_digest)
        if local is not None:
            return Path(local)
        prefetched = self._inflight.get(object_key(file_digest))
        if prefetched is not None:
            with contextlib.suppress(Exception):  # if it failed, the chunks are fetched below
                prefetched.result()
        if self._unstage(file_digest) or self.has_object(file_digest):
            return self.object_file(file_digest)
        for extent in self._file(file_digest).extents:
            self.ensure_chunk(extent.chunk)
        self._unstage(file_digest)
        if not self.has_object(file_digest):
            raise NotFoundError(f"object {file_digest} missing after its chunks arrived")
        return self.object_file(file_digest)

    def read(self, file_digest: str, offset: int, size: int) -> bytes:
        """Bytes of a file, fetching only the chunks under them (for large files) unless the
        prefetch is about to place them."""
        found = self._file(file_digest)
        self._wait_for_pieces(file_digest, offset, size)
        data = self.read_local(file_digest, offset, size)
        if data is not None:
            return data
        for number in self._extents_under(found, offset, size):
            self.ensure_chunk(found.extents[number].chunk)
        data = self._read_placed(file_digest, offset, size)
        return data if data is not None else self.read(file_digest, offset, size)

    def read_local(self, file_digest: str, offset: int, size: int) -> bytes | None:
        """Bytes of a file if every chunk under them is on this host, else None (it never
        fetches, so a caller that must not block on the network can try it first)."""
        if not self.has_object(file_digest):
            partial = self._partials.get(file_digest)
            if partial is None or not partial.has(offset, size):
                return None
        return self._read_placed(file_digest, offset, size)

    def placed_ranges(self, file_digest: str) -> list[tuple[int, int]]:
        """The parts of a large file on this host: (offset, length) each, none once the file is
        complete (it is then a local object)."""
        with self._lock:
            partial = self._partials.get(file_digest)
            return partial.ranges() if partial is not None else []

    def _read_placed(self, file_digest: str, offset: int, size: int) -> bytes | None:
        # The file is complete, or still partial: it moves from one to the other (or is
        # evicted) at any time, so look in both.
        for path in (f"{self.objects}/{object_path(file_digest)}", f"{self.partial}/{file_digest}"):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                return os.pread(fd, size, offset)
            finally:
                os.close(fd)
        return None

    @staticmethod
    def _extents_under(found: FileContent, offset: int, size: int) -> range:
        """The numbers of the file's extents that bytes [offset, offset + size) lie in."""
        if len(found.starts) == 1:
            return range(1)
        first = bisect.bisect_right(found.starts, offset) - 1
        return range(max(first, 0), bisect.bisect_right(found.starts, offset + max(size, 1) - 1))

    def _file(self, file_digest: str) -> FileContent:
        found = self.file(file_digest)
        if found is None:
            raise NotFoundError(f"no loaded image has a file with content {file_digest}")
        return found

    # -- chunks --------------------------------------------------------------------------------

    def ensure_chunk(self, chunk_digest: str) -> None:
        """Fetch the chunk and write every object it holds, unless that is done already; a
        chunk several threads want at once is fetched by one of them."""
        if self._chunk_placed(chunk_digest):
            return
        future, owner = self._claim(chunk_digest)
        if not owner:
            future.result()
            return
        self._place_claimed(chunk_digest, future, lambda: self._fetch(chunk_digest))

    def _claim(self, chunk_digest: str) -> tuple[Future[None], bool]:
        """The promise that the chunk will be placed, and whether the caller must keep it (no
        other thread had made it yet); the keeper settles it."""
        with self._lock:
            future = self._inflight.get(chunk_digest)
            if future is not None:
                return future, False
            future = self._inflight[chunk_digest] = Future()
            return future, True

    def _place_claimed(
        self, chunk_digest: str, future: Future[None], data: Callable[[], bytes]
    ) -> None:
        """Place a chunk the caller claimed, with `data()` its bytes, unless it is placed
        already; then settle the claim, with the error if that failed."""
        try:
            if not self._chunk_placed(chunk_digest):
                self._place(chunk_digest, data())
        except BaseException as error:
            self._settle(chunk_digest, future, error)
            raise
        self._settle(chunk_digest, future)

    def _settle(self, key: str, future: Future[None], error: BaseException | None = None) -> None:
        """Settle a claim (of a chunk, or a piece) made by `_claim`."""
        with self._lock:
            del self._inflight[key]
            self._claimed_pieces.pop(key, None)
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def _chunk_placed(self, chunk_digest: str) -> bool:
        for ref in self._refs(chunk_digest):
            if self._has_whole(ref.file.digest):
                continue
            partial = self._partials.get(ref.file.digest)
            if partial is None or ref.extent not in partial.have:
                return False
        return True

    def _fetch(self, chunk_digest: str) -> bytes:
        key = content.chunk_key(chunk_digest)
        for attempt in range(FETCH_ATTEMPTS):
            blob = self.store.get(key)
            try:
                data = content.open_chunk(chunk_digest, blob)
            except CorruptChunkError:
                with self._lock:
                    self.stats.corrupt_chunks += 1
                if attempt == FETCH_ATTEMPTS - 1:
                    raise
                continue
            self._count_fetched(chunk_digest, data, blob)
            return data
        raise AssertionError("unreachable")

    def _count_fetched(self, chunk_digest: str, data: bytes, blob: bytes) -> None:
        with self._lock:
            self.stats.chunks_fetched += 1
            self.stats.bytes_fetched += len(data)
            self.stats.bytes_transferred += len(blob)

    def _place(self, chunk_digest: str, data: bytes) -> None:
        for ref in self._refs(chunk_digest):
            found, extent = ref.file, ref.file.extents[ref.extent]
            if self._has_whole(found.digest):
                continue
            piece = memoryview(data)[extent.offset : extent.offset + extent.length]
            if len(found.extents) == 1:
                self._place_object(found.digest, piece)
            else:
                self._place_extent(ref, piece)

    def _has_whole(self, file_digest: str) -> bool:
        """Whether the file is on this host whole: an object, or a small file staged."""
        # Staged first: a staged file becomes an object at once (`_unstage`), so asked in this
        # order the two never both say no to a file that is here.
        return file_digest in self._staged or self.has_object(file_digest)

    def _place_object(self, file_digest: str, data: bytes | memoryview) -> None:
        """A small file's content, whole: into the object directory, or into `staged/` while
        some start records (each small file it opens must reach the FUSE server to be noted,
        and moves in then; images share files, so whatever image this one is of)."""
        if not self.reads.active:
            target = f"{self.objects}/{object_path(file_digest)}"
            self._add_object(file_digest, _write_atomic(target, data))
            return
        size = _write_atomic(f"{self.staged}/{file_digest}", data)
        with self._lock:
            self._staged[file_digest] = size
        if not self.reads.active:  # it ended while this was written: it moved the others only
            self._unstage(file_digest)

    def _place_extent(self, ref: ChunkRef, piece: memoryview) -> None:
        found = ref.file
        extent = (ref.extent, len(found.extents))
        self._place_range(found.digest, found.size, found.starts[ref.extent], piece, extent)

    def _place_range(
        self,
        file_digest: str,
        size: int,
        offset: int,
        data: bytes | memoryview,
        extent: tuple[int, int] | None = None,
    ) -> None:
        """Write bytes of a large file into its partial copy and mark them in place (`extent`:
        they are its extent number so-and-so of so many). Once every page or every extent is
        in place, the file becomes a local object."""
        with self._lock:
            partial = self._partials.get(file_digest)
            if partial is None:
                partial = self._partials[file_digest] = _Partial(size)
        path = self.partial / file_digest
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o444)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
        with self._lock:
            partial.mark(offset, len(data))
            if extent is not None:
                partial.have.add(extent[0])
            complete = self._partials.get(file_digest) is partial and (
                partial.whole() or (extent is not None and len(partial.have) == extent[1])
            )
            if complete:  # (and no other thread completes it too)
                del self._partials[file_digest]
        if self.on_extent_placed is not None:
            self.on_extent_placed(file_digest, offset, memoryview(data))
        if complete:
            target = self.object_file(file_digest)
            os.truncate(path, size)
            os.replace(path, target)
            self._add_object(file_digest, size)

    # -- recording and prefetch -----------------------------------------------------------------

    def start_recording(self, image_id: str) -> None:
        """A start of the image records what it reads (none has before): until it is saved,
        the small files it opens and its reads of large files are noted in `reads` (the FUSE
        server tells), and each must reach the FUSE server to be seen: small files placed
        meanwhile wait in `staged/` until opened (or until the recording ends), and no page of
        a large file goes to the kernel ahead of its read (the FUSE server asks
        `reads.active`)."""
        self.reads.start(image_id)

    def stop_recording(self, image_id: str) -> None:
        if not self.reads.stop(image_id):
            return  # another start still records
        with self._lock:
            staged = list(self._staged)
        for digest in staged:
            self._unstage(digest)

    def _unstage(self, file_digest: str) -> bool:
        """Move a small file placed while recording into the object directory; False if it
        is not staged.

        It leaves `_staged` and joins the objects (`_usage`) in one step, under the lock. When
        several containers open the same file at once, their opens all wait for its chunk and
        wake together: one of them moves it here, and the others, finding it no longer staged,
        look for it among the objects (`ensure_object`). Had it left the one before joining
        the other, they would find it in neither and fail the open with ENOENT: a container
        starting with the others would lose a shared library that is on the host."""
        with self._lock:
            size = self._staged.pop(file_digest, None)
            if size is None:
                return False
            os.replace(self.staged / file_digest, self.object_file(file_digest))
            victims = self._account(file_digest, size)
        self._evict(victims)
        return True

    def save_reads(self, image_id: str, reads: list[str | Read]) -> None:
        """Record that a start of the image read `reads`, in this order, and make the image's
        prefetch pack of them: one object, read in a few large ranges instead of one request
        per chunk. Each small file goes in compressed alone; the bytes of large files read go
        in as pieces of consecutive pages (each compressed alone, with its own digest), each
        page once. The recording says where each is in the pack and what it holds. It is stored
        last: once it can be read, the pack is whole."""
        items = recording.pieces(reads, lambda digest: self._file(digest).size, CHUNK_SIZE)
        with ThreadPoolExecutor(PACK_THREADS, thread_name_prefix="ember-pack") as pool:
            packed = list(pool.map(self._packed, items))
        recorded: list[Recorded] = []
        start = 0
        for item, (blob, piece_digest) in zip(items, packed, strict=True):
            if isinstance(item, str):
                recorded.append(RecordedObject(item, start, len(blob)))
            else:
                size = self._file(item.file).size
                piece = RecordedPiece(
                    item.file, size, item.offset, item.size, piece_digest, start, len(blob)
                )
                recorded.append(piece)
            start += len(blob)
        self.store.put(manifest.prefetch_key(image_id), b"".join(blob for blob, _ in packed))
        self.store.put(manifest.reads_key(image_id), recording.document(recorded))

    def _packed(self, item: str | Read) -> tuple[bytes, str]:
        """An item of the pack as stored, and the digest it is checked against."""
        if isinstance(item, str):
            return content.compress(self.ensure_object(item).read_bytes()), item
        data = self.read(item.file, item.offset, item.size)
        return content.compress(data), content.digest(data)

    def recorded_reads(self, image_id: str) -> list[Recorded] | None:
        try:
            return recording.parse(self.store.get(manifest.reads_key(image_id)))
        except NotFoundError:
            return None

    def prefetch(
        self,
        image_id: str,
        recorded: list[Recorded],
        indexed: Future[object],
        workers: int = PREFETCH_WORKERS,
    ) -> None:
        """Fetch the recorded small files and pieces from the image's prefetch pack and place
        them, earliest first: they are in the order a start read them, and the starting container
        reads right behind the prefetch's front. The pack is read in ranges of about
        PACK_RANGE_BYTES, PREFETCH_AHEAD at once; `workers` threads check and place what
        arrived, each the earliest first (`imagefs.prefetch`).

        Fetching and checking needs no index, so it starts while the image's content index is
        still being fetched; placing waits for `indexed` (done once it is loaded, or failed with
        the reason it could not be: then nothing is placed for an image that cannot be used).
        What the host has is not fetched, nor what another thread is fetching."""
        prefetch.run(
            recording.ranges(recorded, PACK_RANGE_BYTES),
            lambda run: self._fetch_range(image_id, run),
            lambda claimed: self._check_and_place(claimed, indexed),
            workers=workers,
            ahead=PREFETCH_AHEAD,
        )

    def _fetch_range(self, image_id: str, run: list[Recorded]) -> list[tuple[int, _Claimed]]:
        """What of `run` this host lacks, read from the pack in one request, each claimed until
        placed (a reader that wants it meanwhile waits for it), with its place in the pack."""
        wanted = [recorded for recorded in run if not self._has_recorded(recorded)]
        if not wanted:
            return []
        first, last = wanted[0], wanted[-1]
        length = last.start + last.size - first.start
        blob = self.store.get(manifest.prefetch_key(image_id), first.start, length)
        claimed = []
        for recorded in wanted:
            future, owner = self._claim_recorded(recorded)
            if owner:
                at = recorded.start - first.start
                packed = blob[at : at + recorded.size]
                claimed.append((recorded.start, _Claimed(recorded, future, packed)))
        return claimed

    def _check_and_place(self, claimed: _Claimed, indexed: Future[object]) -> None:
        """Check a claimed small file or piece from its bytes in the pack and place it once the
        image's content index is loaded. The claim is settled either way, with the error if
        that failed (a damaged one is dropped): a reader that wants those bytes then fetches
        their chunks. Raises only if the index could not be loaded or placing failed."""
        recorded, future, key = claimed.recorded, claimed.future, claimed.recorded.key
        try:
            data = self._open_packed(recorded, claimed.packed)
        except BaseException as error:
            self._settle(key, future, error)
            log.warning("prefetching %s failed: %s", key, error)
            return
        try:
            indexed.result()
        except BaseException as error:  # nothing can be placed
            self._settle(key, future, error)
            raise
        try:
            if isinstance(recorded, RecordedObject):
                if not self._has_whole(recorded.object):
                    self._place_object(recorded.object, data)
            elif not self.has_object(recorded.file):
                self._place_range(recorded.file, recorded.file_size, recorded.offset, data)
        except BaseException as error:
            self._settle(key, future, error)
            raise
        self._settle(key, future)

    def _has_recorded(self, recorded: Recorded) -> bool:
        if isinstance(recorded, RecordedObject):
            return self._has_whole(recorded.object)
        if self.has_object(recorded.file):
            return True
        partial = self._partials.get(recorded.file)
        return partial is not None and partial.has(recorded.offset, recorded.length)

    def _open_packed(self, recorded: Recorded, blob: bytes) -> bytes:
        """Raises CorruptChunkError if damaged: the store has no copy of its own of a packed
        object or piece, so a read of those bytes fetches their chunks instead."""
        digest = recorded.object if isinstance(recorded, RecordedObject) else recorded.digest
        try:
            data = content.open_chunk(digest, blob)
        except CorruptChunkError:
            with self._lock:
                self.stats.corrupt_chunks += 1
            raise
        self._count_fetched(digest, data, blob)
        return data

    def _claim_recorded(self, recorded: Recorded) -> tuple[Future[None], bool]:
        future, owner = self._claim(recorded.key)
        if owner and isinstance(recorded, RecordedPiece):
            with self._lock:
                self._claimed_pieces[recorded.key] = recorded
        return future, owner

    def _wait_for_pieces(self, file_digest: str, offset: int, size: int) -> None:
        """Wait until the pieces of those bytes that a prefetch has claimed are placed (or
        failed)."""
        with self._lock:
            waits = [
                self._inflight[key]
                for key, piece in self._claimed_pieces.items()
                if piece.file == file_digest
                and piece.offset < offset + size
                and offset < piece.offset + piece.length
            ]
        for future in waits:
            with contextlib.suppress(Exception):
                future.result()

    # -- size bound ----------------------------------------------------------------------------

    def _scan_objects(self) -> None:
        found = []
        for directory in self.objects.iterdir():
            for item in os.scandir(directory):
                if item.name.startswith("."):
                    os.unlink(item.path)  # a write that died half-way
                    continue
                st = item.stat()
                found.append((st.st_mtime, item.name, st.st_size))
        for _, name, size in sorted(found):
            self._usage[name] = size
            self._used_bytes += size

    def _discard_partials(self) -> None:
        for directory in (self.partial, self.staged):
            for item in directory.iterdir():
                item.unlink()

    def _touch(self, file_digest: str) -> None:
        with self._lock:
            if file_digest in self._usage:
                self._usage.move_to_end(file_digest)

    def touch_image(self, loaded: ContentIndex) -> None:
        """Mark every object of `loaded` as just used (it is starting a container)."""
        with self._lock:
            for digest in loaded.files:
                if digest in self._usage:
                    self._usage.move_to_end(digest)

    def _add_object(self, file_digest: str, size: int) -> None:
        """An object now in the object directory."""
        with self._lock:
            victims = self._account(file_digest, size)
        self._evict(victims)

    def _account(self, file_digest: str, size: int) -> list[str]:
        """Count an object in, with the lock held; returns the least recently used objects it
        pushes out (`_evict` removes them, without the lock)."""
        if file_digest not in self._usage:
            self._used_bytes += size
        self._usage[file_digest] = size
        self._usage.move_to_end(file_digest)
        victims = []
        while self._used_bytes > self.limit_bytes and len(self._usage) > 1:
            digest, victim_size = self._usage.popitem(last=False)
            self._used_bytes -= victim_size
            victims.append(digest)
        self.stats.evicted_objects += len(victims)
        return victims

    def _evict(self, victims: list[str]) -> None:
        for digest in victims:
            self.object_file(digest).unlink(missing_ok=True)

    @property
    def used_bytes(self) -> int:
        return self._used_bytes

    def collect_garbage(self, keep_images: set[str]) -> int:
        """Drop cached images not in `keep_images` and objects no kept image uses; returns the
        number of objects removed. The caller unmounts dropped images first."""
        kept_digests: set[str] = set()
        for image_id in self.cached_images():
            if image_id in keep_images:
                kept_digests.update(self.load_image(image_id).files)
            else:
                _remove_tree(self.images / image_id)
                with self._lock:
                    dropped = self._indexes.pop(image_id, None)
                    self._loaded = tuple(i for i in self._loaded if i is not dropped)
        removed = 0
        with self._lock:
            for digest in [d for d in self._usage if d not in kept_digests]:
                self._used_bytes -= self._usage.pop(digest)
                self.object_file(digest).unlink(missing_ok=True)
                removed += 1
        return removed


def _write_atomic(path: str | Path, data: bytes | memoryview) -> int:
    """Write `path` whole or not at all; its directory must exist. A cold start writes thousands
    of small objects through here, so it makes the fewest system calls it can."""
    directory, name = os.path.split(path)
    # A name of this thread's own, dot-first: a write that died half-way is found and removed
    # when the cache starts. Readable by root only: overlay reads its layers as the mounter.
    temp = f"{directory}/.incoming-{threading.get_ident()}-{name}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return len(data)


def _remove_tree(path: Path) -> None:
    for child in sorted(path.rglob("*"), reverse=True):
        if child.is_dir() and not child.is_symlink():
            child.rmdir()
        else:
            child.unlink()
    path.rmdir()
