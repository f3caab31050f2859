"""Directory trees into manifests: hash, chunk, compress and upload the content of a tree.

Two shapes of input:
- a whole tree (a debootstrap root, an unpacked registry image): `pack_tree(root, store)`;
- the upper directory of a build step's overlay, the step's changes over its parent image:
  `pack_tree(upper, store, parent=parent_manifest)`. Overlay marks a deleted path with a 0:0
  character device (a whiteout), a replaced directory with `trusted.overlay.opaque`, and a file
  whose metadata alone changed with `trusted.overlay.metacopy` (its content stays the parent's).

Files at most `PACK_LIMIT` long are packed, in path order, into shared chunks of up to
`CHUNK_SIZE`: a Python package's many small files then arrive in a few requests. Larger files
get chunks of their own. Content already in the parent keeps its chunks, so a layer that
rewrites an unchanged file uploads nothing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ember.imagefs import content
from ember.imagefs.content import CHUNK_SIZE
from ember.imagefs.manifest import DIR, FILE, SYMLINK, Entry, Extent, ImageConfig, Manifest
from ember.imagefs.store import ChunkStore

PACK_LIMIT = 256 << 10

_UPLOAD_THREADS = 8
_OPAQUE = "trusted.overlay.opaque"
_METACOPY = "trusted.overlay.metacopy"


@dataclass
class PackStats:
    files: int = 0
    bytes_read: int = 0
    chunks_uploaded: int = 0
    bytes_uploaded: int = 0  # compressed


def pack_tree(
    root: Path,
    store: ChunkStore,
    *,
    parent: Manifest | None = None,
    config: ImageConfig | None = None,
    progress: Callable[[str], None] | None = None,
    owner: Callable[[int], int] | None = None,
) -> tuple[Manifest, PackStats]:
    """The manifest of `root` (or of `parent` with the overlay upper dir `root` applied).

    `owner` turns the tree's owner ids into the image's: a build container's writable layer
    holds the host ids its user namespace maps to, which stand for the image's own.
    """
    entries = dict(parent.entries) if parent else {}
    known = _known_content(parent)
    stats = PackStats()
    small: list[tuple[str, Entry]] = []
    with _Uploader(store, stats) as uploader:
        for path, walked in _walk(root, entries, parent is not None):
            entry = walked
            if owner is not None:
                entry = walked._replace(uid=owner(walked.uid), gid=owner(walked.gid))
            if entry.kind != FILE or entry.size == 0 or entry.extents:
                entries[path] = entry
                continue
            stats.files += 1
            file_path = root / path
            if entry.size <= PACK_LIMIT:
                data = file_path.read_bytes()
                stats.bytes_read += len(data)
                file_digest = content.digest(data)
                if file_digest in known:
                    entries[path] = entry._replace(digest=file_digest, extents=known[file_digest])
                else:
                    small.append((path, entry._replace(digest=file_digest)))
                    uploader.pack(data)
            else:
                entries[path] = _large_file(file_path, entry, uploader, stats)
            if progress and stats.files % 2000 == 0:
                progress(f"packed {stats.files} files ({stats.bytes_read >> 20} MiB)\n")
        placed = uploader.finish_packs()
    for (path, entry), extent in zip(small, placed, strict=True):
        entries[path] = entry._replace(extents=(extent,))
    return Manifest(entries, config or (parent.config if parent else ImageConfig())), stats


def _known_content(parent: Manifest | None) -> dict[str, tuple[Extent, ...]]:
    if parent is None:
        return {}
    return {entry.digest: entry.extents for entry in parent.files()}


def _large_file(path: Path, entry: Entry, uploader: _Uploader, stats: PackStats) -> Entry:
    # Fixed-size chunks: equal content gives equal chunks, which the store already holds.
    hasher = content.blake3_hasher()
    extents = []
    with path.open("rb") as file:
        while piece := file.read(CHUNK_SIZE):
            hasher.update(piece)
            extents.append(uploader.whole(piece))
            stats.bytes_read += len(piece)
    return entry._replace(digest=hasher.hexdigest(), extents=tuple(extents))


class _Uploader:
    """Compresses and stores chunks on a few threads; packs small files into shared chunks."""

    def __init__(self, store: ChunkStore, stats: PackStats) -> None:
        self._store = store
        self._stats = stats
        self._pool = ThreadPoolExecutor(_UPLOAD_THREADS, thread_name_prefix="ember-pack")
        self._pending: list[Future[None]] = []
        self._pack: list[bytes] = []
        self._pack_size = 0
        self._pack_members: list[tuple[int, int]] = []  # (pack number, offset) per packed file
        self._pack_digests: list[str] = []
        self._lengths: list[int] = []

    def __enter__(self) -> _Uploader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=exc[0] is not None)

    def whole(self, data: bytes) -> Extent:
        chunk_digest = content.digest(data)
        self._submit(chunk_digest, data)
        return Extent(chunk_digest, 0, len(data))

    def pack(self, data: bytes) -> None:
        if self._pack_size + len(data) > CHUNK_SIZE:
            self._close_pack()
        self._pack_members.append((len(self._pack_digests), self._pack_size))
        self._lengths.append(len(data))
        self._pack.append(data)
        self._pack_size += len(data)

    def finish_packs(self) -> list[Extent]:
        """Close the last pack, wait for every upload; the extent of each packed file in order."""
        self._close_pack()
        for future in self._pending:
            future.result()
        return [
            Extent(self._pack_digests[number], offset, length)
            for (number, offset), length in zip(self._pack_members, self._lengths, strict=True)
        ]

    def _close_pack(self) -> None:
        if not self._pack:
            return
        data = b"".join(self._pack)
        chunk_digest = content.digest(data)
        self._pack_digests.append(chunk_digest)
        self._submit(chunk_digest, data)
        self._pack, self._pack_size = [], 0

    def _submit(self, chunk_digest: str, data: bytes) -> None:
        self._pending.append(self._pool.submit(self._upload, chunk_digest, data))
        if len(self._pending) > 4 * _UPLOAD_THREADS:  # bound the memory held by queued chunks
            self._pending.pop(0).result()

    def _upload(self, chunk_digest: str, data: bytes) -> None:
        key = content.chunk_key(chunk_digest)
        if self._store.exists(key):
            return
        blob = content.compress(data)
        self._store.put(key, blob)
        self._stats.chunks_uploaded += 1
        self._stats.bytes_uploaded += len(blob)


def _walk(root: Path, entries: dict[str, Entry], is_upper: bool) -> Iterator[tuple[str, Entry]]:
    """Entries of the tree under `root`, parents before children. For an overlay upper dir it
    applies this layer's deletions to `entries` as they are met."""
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        relative_dir = os.path.relpath(directory, root)
        relative_dir = "" if relative_dir == "." else relative_dir
        if is_upper:
            _replace(entries, relative_dir, DIR)
            if _xattr(directory, _OPAQUE) == b"y":
                _delete_below(entries, relative_dir)
        yield relative_dir, _entry(relative_dir, directory, os.lstat(directory))
        # os.walk lists symlinks to directories with the directories; they are leaves here.
        links = [d for d in dirnames if os.path.islink(os.path.join(directory, d))]
        for name in sorted(filenames + links):
            full = os.path.join(directory, name)
            path = f"{relative_dir}/{name}" if relative_dir else name
            st = os.lstat(full)
            if is_upper and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                entries.pop(path, None)  # a whiteout: deleted in this layer
                _delete_below(entries, path)
                continue
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                continue  # devices, fifos, sockets: the runtime provides /dev
            entry = _entry(path, full, st)
            if is_upper:
                lower = _replace(entries, path, entry.kind)
                if entry.kind == FILE and _xattr(full, _METACOPY) is not None and lower:
                    # Only the metadata changed; the content is still the lower file's.
                    entry = entry._replace(
                        size=lower.size, digest=lower.digest, extents=lower.extents
                    )
            yield path, entry


def _replace(entries: dict[str, Entry], path: str, kind: str) -> Entry | None:
    """Make way for an upper entry of `kind` at `path`; returns the lower entry it keeps."""
    lower = entries.get(path)
    if lower is None:
        return None
    if lower.kind == DIR and kind != DIR:
        _delete_below(entries, path)  # a file now stands where a directory was
    return lower if lower.kind == kind else None


def _delete_below(entries: dict[str, Entry], path: str) -> None:
    prefix = f"{path}/" if path else ""
    for key in [k for k in entries if k.startswith(prefix) and k != path]:
        del entries[key]


def _entry(path: str, full: str, st: os.stat_result) -> Entry:
    common = {
        "path": path,
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mtime_ns": st.st_mtime_ns,
        "xattrs": _user_xattrs(full),
    }
    if stat.S_ISDIR(st.st_mode):
        return Entry(kind=DIR, **common)
    if stat.S_ISLNK(st.st_mode):
        return Entry(kind=SYMLINK, target=os.readlink(full), **common)
    return Entry(kind=FILE, size=st.st_size, **common)


def _xattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def _user_xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    """Extended attributes to keep (file capabilities, user.*); overlay's own are not content."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    kept = sorted(n for n in names if not n.startswith("trusted.overlay."))
    return tuple((n, os.getxattr(path, n, follow_symlinks=False)) for n in kept)
