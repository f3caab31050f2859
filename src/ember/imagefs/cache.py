"""A host's image cache: fetched content, image metadata, and what to fetch ahead of a start.

Layout under the cache root:

    objects/<d[:2]>/<d>   complete files by content digest: overlay's first data-only layer
    partial/<d>           large files being filled chunk by chunk (discarded on restart)
    images/<id>/          a cached image: its manifest and its erofs metadata image

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
import gc
import json
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ember.errors import NotFoundError
from ember.imagefs import content, manifest
from ember.imagefs.content import CorruptChunkError
from ember.imagefs.manifest import Entry, Manifest
from ember.imagefs.metadata import object_path
from ember.imagefs.store import ChunkStore

FETCH_ATTEMPTS = 3
PREFETCH_THREADS = 4  # more only contend for the two or so cores a host spares


@dataclass
class CacheStats:
    chunks_fetched: int = 0
    bytes_fetched: int = 0  # uncompressed bytes of fetched chunks
    bytes_transferred: int = 0  # as stored (compressed)
    corrupt_chunks: int = 0
    evicted_objects: int = 0


@dataclass
class _Reference:
    """One place a chunk's bytes go: the extent `extent` of the file `entry`."""

    entry: Entry
    extent: int
    file_offset: int


@dataclass
class _Partial:
    """A large file being filled: which of its extents are in place."""

    have: set[int] = field(default_factory=set)


class ImageCache:
    def __init__(self, root: Path, store: ChunkStore, limit_bytes: int) -> None:
        self.root = root
        self.store = store
        self.limit_bytes = limit_bytes
        self.objects = root / "objects"
        self.partial = root / "partial"
        self.images = root / "images"
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._files: dict[str, Entry] = {}  # by content digest, over every loaded image
        self._chunk_refs: dict[str, list[_Reference]] = {}
        self._manifests: dict[str, Manifest] = {}  # loaded and indexed
        self._inflight: dict[str, Future[bytes]] = {}
        self._partials: dict[str, _Partial] = {}
        self._extent_starts: dict[str, list[int]] = {}  # large files: where each extent begins
        self._usage: OrderedDict[str, int] = OrderedDict()  # object digest -> size, LRU first
        self._used_bytes = 0
        self._fetch_log: list[tuple[float, str]] = []  # (time, chunk) in fetch order
        for directory in (self.objects, self.partial, self.images):
            directory.mkdir(parents=True, exist_ok=True)
        for prefix in range(256):  # made once, not checked at every write
            (self.objects / f"{prefix:02x}").mkdir(exist_ok=True)
        self._discard_partials()
        self._scan_objects()

    # -- images --------------------------------------------------------------------------------

    def load_image(self, image_id: str) -> Manifest:
        """The image's manifest, fetched once per host, with its files added to the index."""
        known = self._manifests.get(image_id)
        if known is not None:  # parsing a large manifest takes a while: once per process
            return known
        cached = self.images / image_id / "manifest"
        if cached.is_file():
            loaded = manifest.from_stored(image_id, cached.read_bytes())
        else:
            blob = self.store.get(manifest.manifest_key(image_id))
            loaded = manifest.from_stored(image_id, blob)
            cached.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(cached, blob)  # as stored: writing it out again would take longer
        with self._lock, manifest.collector_paused():
            if image_id not in self._manifests:
                self._index(loaded)
                self._manifests[image_id] = loaded
                # The index lives as long as the process: later collections need not walk it.
                gc.freeze()
        return loaded

    def metadata_image(self, image_id: str) -> Path:
        """The image's erofs metadata image on local disk, fetched if needed."""
        path = self.images / image_id / "meta.erofs"
        if not path.is_file():
            blob = self.store.get(manifest.metadata_key(image_id))
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, content.decompress(blob))
        return path

    def cached_images(self) -> list[str]:
        return sorted(p.name for p in self.images.iterdir() if (p / "manifest").is_file())

    def _index(self, loaded: Manifest) -> None:
        for entry in loaded.files():
            if entry.digest in self._files:
                continue
            self._files[entry.digest] = entry
            offset = 0
            starts = []
            for number, extent in enumerate(entry.extents):
                refs = self._chunk_refs.setdefault(extent.chunk, [])
                refs.append(_Reference(entry, number, offset))
                starts.append(offset)
                offset += extent.length
            if len(starts) > 1:
                self._extent_starts[entry.digest] = starts

    def file(self, file_digest: str) -> Entry | None:
        return self._files.get(file_digest)

    # -- objects -------------------------------------------------------------------------------

    def object_file(self, file_digest: str) -> Path:
        return self.objects / object_path(file_digest)

    def has_object(self, file_digest: str) -> bool:
        """Whether the object is in the object directory (known without asking the disk: this
        process writes and removes every object there)."""
        return file_digest in self._usage

    def ensure_object(self, file_digest: str) -> Path:
        """The complete local copy of a file's content, fetching every chunk it lacks."""
        if self.has_object(file_digest):
            self._touch(file_digest)
            return self.object_file(file_digest)
        entry = self._entry(file_digest)
        for extent in entry.extents:
            self.ensure_chunk(extent.chunk)
        if not self.has_object(file_digest):
            raise NotFoundError(f"object {file_digest} missing after its chunks arrived")
        return self.object_file(file_digest)

    def read(self, file_digest: str, offset: int, size: int) -> bytes:
        """Bytes of a file, fetching only the chunks under them (for large files)."""
        entry = self._entry(file_digest)
        for number in self._extents_under(file_digest, offset, size):
            self.ensure_chunk(entry.extents[number].chunk)
        data = self._read_placed(file_digest, offset, size)
        return data if data is not None else self.read(file_digest, offset, size)

    def read_local(self, file_digest: str, offset: int, size: int) -> bytes | None:
        """Bytes of a file if every chunk under them is on this host, else None (it never
        fetches, so a caller that must not block on the network can try it first)."""
        if not self.has_object(file_digest):
            partial = self._partials.get(file_digest)
            if partial is None:
                return None
            if any(n not in partial.have for n in self._extents_under(file_digest, offset, size)):
                return None
        return self._read_placed(file_digest, offset, size)

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

    def _extents_under(self, file_digest: str, offset: int, size: int) -> range:
        """The numbers of the file's extents that bytes [offset, offset + size) lie in."""
        starts = self._extent_starts.get(file_digest)
        if starts is None:
            return range(1)
        first = bisect.bisect_right(starts, offset) - 1
        return range(max(first, 0), bisect.bisect_right(starts, offset + max(size, 1) - 1))

    def _entry(self, file_digest: str) -> Entry:
        entry = self._files.get(file_digest)
        if entry is None:
            raise NotFoundError(f"no loaded image has a file with content {file_digest}")
        return entry

    # -- chunks --------------------------------------------------------------------------------

    def ensure_chunk(self, chunk_digest: str) -> None:
        """Fetch the chunk and write every object it holds, unless that is done already; a
        chunk several threads want at once is fetched by one of them."""
        if self._chunk_placed(chunk_digest):
            return
        with self._lock:
            future = self._inflight.get(chunk_digest)
            owner = future is None
            if owner:
                future = self._inflight[chunk_digest] = Future()
        if not owner:
            future.result()
            return
        try:
            if not self._chunk_placed(chunk_digest):
                self._place(chunk_digest, self._fetch(chunk_digest))
            future.set_result(b"")
        except BaseException as error:
            future.set_exception(error)
            raise
        finally:
            with self._lock:
                del self._inflight[chunk_digest]

    def _chunk_placed(self, chunk_digest: str) -> bool:
        for ref in self._chunk_refs.get(chunk_digest, ()):
            if self.has_object(ref.entry.digest):
                continue
            partial = self._partials.get(ref.entry.digest)
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
            with self._lock:
                self.stats.chunks_fetched += 1
                self.stats.bytes_fetched += len(data)
                self.stats.bytes_transferred += len(blob)
                self._fetch_log.append((time.monotonic(), chunk_digest))
            return data
        raise AssertionError("unreachable")

    def _place(self, chunk_digest: str, data: bytes) -> None:
        objects = str(self.objects)
        for ref in self._chunk_refs.get(chunk_digest, ()):
            entry, extent = ref.entry, ref.entry.extents[ref.extent]
            if self.has_object(entry.digest):
                continue
            piece = memoryview(data)[extent.offset : extent.offset + extent.length]
            if len(entry.extents) == 1:
                target = f"{objects}/{object_path(entry.digest)}"
                self._add_object(entry.digest, _write_atomic(target, piece))
            else:
                self._place_extent(ref, piece)

    def _place_extent(self, ref: _Reference, piece: memoryview) -> None:
        digest = ref.entry.digest
        path = self.partial / digest
        with self._lock:
            partial = self._partials.setdefault(digest, _Partial())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o444)
        try:
            os.pwrite(fd, piece, ref.file_offset)
        finally:
            os.close(fd)
        with self._lock:
            partial.have.add(ref.extent)
            complete = len(partial.have) == len(ref.entry.extents)
            if complete:
                del self._partials[digest]
        if complete:
            target = self.object_file(digest)
            target.parent.mkdir(exist_ok=True)
            os.truncate(path, ref.entry.size)
            os.replace(path, target)
            self._add_object(digest, ref.entry.size)

    # -- recording and prefetch -----------------------------------------------------------------

    def fetched_since(self, since: float, image: Manifest) -> list[str]:
        """Chunks of `image` fetched since the monotonic time `since`, in fetch order."""
        wanted = image.chunks()
        with self._lock:
            log = list(self._fetch_log)
        seen: set[str] = set()
        chunks = []
        for at, chunk in log:
            if at >= since and chunk in wanted and chunk not in seen:
                seen.add(chunk)
                chunks.append(chunk)
        return chunks

    def save_reads(self, image_id: str, chunks: list[str]) -> None:
        self.store.put(manifest.reads_key(image_id), json.dumps(chunks).encode())

    def recorded_reads(self, image_id: str) -> list[str] | None:
        try:
            return json.loads(self.store.get(manifest.reads_key(image_id)))
        except NotFoundError:
            return None

    def prefetch(self, chunks: list[str], threads: int = PREFETCH_THREADS) -> None:
        """Fetch `chunks` in parallel, earliest first (they are in the order a start read them)."""
        with ThreadPoolExecutor(threads, thread_name_prefix="ember-prefetch") as pool:
            for future in [pool.submit(self.ensure_chunk, chunk) for chunk in chunks]:
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
        for item in self.partial.iterdir():
            item.unlink()

    def _touch(self, file_digest: str) -> None:
        with self._lock:
            if file_digest in self._usage:
                self._usage.move_to_end(file_digest)

    def touch_image(self, loaded: Manifest) -> None:
        """Mark every object of `loaded` as just used (it is starting a container)."""
        with self._lock:
            for entry in loaded.files():
                if entry.digest in self._usage:
                    self._usage.move_to_end(entry.digest)

    def _add_object(self, file_digest: str, size: int) -> None:
        with self._lock:
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
                kept_digests.update(e.digest for e in self.load_image(image_id).files())
            else:
                _remove_tree(self.images / image_id)
                self._manifests.pop(image_id, None)
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
