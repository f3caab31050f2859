"""An image: its file tree (paths, modes, owners, sizes, symlinks, xattrs, content) and config.

Regular files name their content twice: `digest` is the BLAKE3 digest of the whole file (the
object a host keeps and overlay redirects to), and `extents` say where the bytes sit in chunks
of the chunk store. Small files share chunks ("packs"), large ones span several; either way
reading any byte needs exactly the chunks under it.

A manifest is stored compressed as canonical JSON; the image id is derived from those bytes,
so equal trees with equal config are the same image.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from ember.imagefs import content
from ember.imagefs.store import ChunkStore

DIR, FILE, SYMLINK = "dir", "file", "symlink"

MANIFEST_FORMAT = 1


class Extent(NamedTuple):
    chunk: str  # digest of the chunk holding these bytes
    offset: int  # where they start in the chunk
    length: int


# Named tuples, not dataclasses: a worker makes one per file of an image before the image's first
# container starts on it (~30,000 for torch), and a tuple is made several times faster.
class Entry(NamedTuple):
    path: str  # relative to the image root, no leading slash; "" is the root directory
    kind: str  # DIR, FILE or SYMLINK
    mode: int  # permission bits, setuid/setgid/sticky included
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    size: int = 0
    digest: str = ""  # FILE: the whole content's digest ("" when empty)
    extents: tuple[Extent, ...] = ()
    target: str = ""  # SYMLINK: where it points
    xattrs: tuple[tuple[str, bytes], ...] = ()

    def to_json(self) -> list:
        return [
            self.path,
            self.kind,
            self.mode,
            self.uid,
            self.gid,
            self.mtime_ns,
            self.size,
            self.digest,
            [[e.chunk, e.offset, e.length] for e in self.extents],
            self.target,
            [[name, value.hex()] for name, value in self.xattrs],
        ]

    @classmethod
    def from_json(cls, row: list) -> Entry:
        """The entry of a `to_json` row (which it reuses)."""
        row[8] = tuple(map(Extent._make, row[8]))
        if row[10]:
            row[10] = tuple([(name, bytes.fromhex(value)) for name, value in row[10]])
        else:
            row[10] = ()
        return cls._make(row)


@dataclass(frozen=True)
class ImageConfig:
    """What a container of the image starts with, besides its files."""

    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    python: str = "python3"  # the interpreter that runs the harness

    def to_json(self) -> dict:
        return {"env": self.env, "workdir": self.workdir, "python": self.python}


@dataclass(frozen=True)
class Manifest:
    entries: dict[str, Entry]  # by path
    config: ImageConfig = field(default_factory=ImageConfig)

    def to_bytes(self) -> bytes:
        document = {
            "format": MANIFEST_FORMAT,
            "config": self.config.to_json(),
            "entries": [self.entries[path].to_json() for path in sorted(self.entries)],
        }
        return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        with collector_paused():
            document = json.loads(data)
            entries = (Entry.from_json(row) for row in document["entries"])
            return cls({e.path: e for e in entries}, ImageConfig(**document["config"]))

    @property
    def image_id(self) -> str:
        return image_id_of(self.to_bytes())

    def files(self) -> Iterator[Entry]:
        return (e for e in self.entries.values() if e.kind == FILE and e.size > 0)

    def chunks(self) -> set[str]:
        return {extent.chunk for entry in self.files() for extent in entry.extents}

    @property
    def size(self) -> int:
        return sum(entry.size for entry in self.files())


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for a while. Parsing a large manifest makes some
    100,000 objects and no cycles: the collector, run again and again as they pile up, would
    only walk the whole heap each time (it made parsing torch's manifest 2-5x slower)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def image_id_of(manifest_bytes: bytes) -> str:
    return "im-" + content.digest(manifest_bytes)[:32]


def manifest_key(image_id: str) -> str:
    return f"images/{image_id}/manifest"


def metadata_key(image_id: str) -> str:
    return f"images/{image_id}/meta.erofs"


def reads_key(image_id: str) -> str:
    return f"images/{image_id}/reads"


def prefetch_key(image_id: str) -> str:
    return f"images/{image_id}/prefetch"


def save(store: ChunkStore, manifest: Manifest) -> str:
    """Store the manifest compressed; returns the image id."""
    data = manifest.to_bytes()
    image_id = image_id_of(data)
    store.put(manifest_key(image_id), content.compress(data))
    return image_id


def load(store: ChunkStore, image_id: str) -> Manifest:
    return from_stored(image_id, store.get(manifest_key(image_id)))


def from_stored(image_id: str, blob: bytes) -> Manifest:
    """The manifest from its stored (compressed) form, checked against the image id."""
    data = content.decompress(blob)
    if image_id_of(data) != image_id:
        raise content.CorruptChunkError(f"the manifest of image {image_id} is corrupted")
    return Manifest.from_bytes(data)
