"""An image's content index: for each file's content, where its bytes lie in the chunk store.

It is what a host needs to fetch and place an image's content, and nothing more: the digests,
sizes and extents of the manifest's files, without their paths, and for each chunk the extents
it holds, with the image's config. A host reads it at the start of the first container of an
image it has never seen, while the container waits: the manifest of a large image is megabytes
of JSON, some 0.2 s of parsing for torch's 30,000 files, where the index is flat arrays read in
milliseconds, and a file's extents are made into objects only when that file is wanted.

The index is made from the manifest when an image is published and stored beside it. It carries
the digest of its own arrays, so a damaged copy is refused (and made again from the manifest).
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import sys
from array import array
from typing import NamedTuple

from ember.errors import NotFoundError
from ember.imagefs import content, manifest
from ember.imagefs.content import CorruptChunkError
from ember.imagefs.manifest import Extent, ImageConfig, Manifest
from ember.imagefs.store import ChunkStore

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
_MAGIC = b"ember content index\n"
_DIGEST_BYTES = 32


class FileContent(NamedTuple):
    """One file's content: its digest, size, and the extents it is made of, in order."""

    digest: str
    size: int
    extents: tuple[Extent, ...]
    starts: tuple[int, ...]  # where each extent begins in the file


class ChunkRef(NamedTuple):
    """One place a chunk's bytes go: extent number `extent` of `file`."""

    file: FileContent
    extent: int


class ContentIndex:
    """Read-only once made; safe to use from many threads."""

    def __init__(
        self,
        config: ImageConfig,
        chunks: list[str],
        files: list[str],
        sizes: array,
        first_extent: array,
        extent_chunk: array,
        extent_offset: array,
        extent_length: array,
        chunk_first_ref: array,
        ref_extent: array,
    ) -> None:
        self.config = config
        self.chunks = chunks  # digests, by chunk number
        self.files = files  # content digests, by file number
        # Arrays by file number: size, and where its extents begin in the extent arrays (one
        # more than there are files: the last is the number of extents).
        self._sizes = sizes
        self._first_extent = first_extent
        # Arrays by extent number, a file's extents one after another: chunk number, and where
        # the extent is in the chunk.
        self._extent_chunk = extent_chunk
        self._extent_offset = extent_offset
        self._extent_length = extent_length
        # By chunk number: where its references begin in `_ref_extent`, the extents it holds.
        self._chunk_first_ref = chunk_first_ref
        self._ref_extent = ref_extent
        self._file_numbers = {digest: number for number, digest in enumerate(files)}
        self._chunk_numbers = {digest: number for number, digest in enumerate(chunks)}
        self._made: dict[int, FileContent] = {}

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> ContentIndex:
        files, sizes, first_extent = [], array("Q"), array("I")
        chunk_numbers: dict[str, int] = {}
        extent_chunk, extent_offset, extent_length = array("I"), array("I"), array("I")
        seen: set[str] = set()
        for entry in sorted(manifest.files(), key=lambda e: e.path):
            if entry.digest in seen:  # equal content at several paths: one object
                continue
            seen.add(entry.digest)
            files.append(entry.digest)
            sizes.append(entry.size)
            first_extent.append(len(extent_chunk))
            for extent in entry.extents:
                extent_chunk.append(chunk_numbers.setdefault(extent.chunk, len(chunk_numbers)))
                extent_offset.append(extent.offset)
                extent_length.append(extent.length)
        first_extent.append(len(extent_chunk))
        by_chunk = sorted(range(len(extent_chunk)), key=extent_chunk.__getitem__)  # stable
        chunk_first_ref = array("I", [0] * (len(chunk_numbers) + 1))
        for chunk_number in extent_chunk:
            chunk_first_ref[chunk_number + 1] += 1
        chunk_first_ref = array("I", itertools.accumulate(chunk_first_ref))
        return cls(
            manifest.config,
            list(chunk_numbers),
            files,
            sizes,
            first_extent,
            extent_chunk,
            extent_offset,
            extent_length,
            chunk_first_ref,
            array("I", by_chunk),
        )

    # -- questions -----------------------------------------------------------------------------

    def file(self, file_digest: str) -> FileContent | None:
        number = self._file_numbers.get(file_digest)
        return None if number is None else self._file_at(number)

    def refs(self, chunk_digest: str) -> list[ChunkRef]:
        """Where the chunk's bytes go: none if the image does not use it."""
        number = self._chunk_numbers.get(chunk_digest)
        if number is None:
            return []
        refs = []
        first, last = self._chunk_first_ref[number], self._chunk_first_ref[number + 1]
        for extent in self._ref_extent[first:last]:
            file_number = bisect.bisect_right(self._first_extent, extent) - 1
            refs.append(
                ChunkRef(self._file_at(file_number), extent - self._first_extent[file_number])
            )
        return refs

    def has_chunk(self, chunk_digest: str) -> bool:
        return chunk_digest in self._chunk_numbers

    def _file_at(self, number: int) -> FileContent:
        made = self._made.get(number)
        if made is None:
            made = self._made[number] = self._make_file(number)
        return made

    def _make_file(self, number: int) -> FileContent:
        first, last = self._first_extent[number], self._first_extent[number + 1]
        extents = tuple(
            Extent(
                self.chunks[self._extent_chunk[e]], self._extent_offset[e], self._extent_length[e]
            )
            for e in range(first, last)
        )
        starts = tuple(itertools.accumulate((e.length for e in extents[:-1]), initial=0))
        return FileContent(self.files[number], self._sizes[number], extents, starts)

    # -- stored form ---------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        arrays = self._arrays()
        body = b"".join(
            [bytes.fromhex("".join(self.chunks)), bytes.fromhex("".join(self.files))]
            + [_little_endian(a) for a in arrays]
        )
        header = {
            "format": INDEX_FORMAT,
            "config": self.config.to_json(),
            "chunks": len(self.chunks),
            "files": len(self.files),
            "extents": len(self._extent_chunk),
            "digest": content.digest(body),
        }
        return _MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + body

    @classmethod
    def from_bytes(cls, data: bytes) -> ContentIndex:
        """The index from `to_bytes`; CorruptChunkError if it is damaged or of another format."""
        if not data.startswith(_MAGIC) or b"\n" not in data[len(_MAGIC) :]:
            raise CorruptChunkError("the content index is damaged: no header")
        header_line, body = data[len(_MAGIC) :].split(b"\n", 1)
        try:
            header = json.loads(header_line)
        except ValueError:
            raise CorruptChunkError(
                "the content index is damaged: its header is not JSON"
            ) from None
        if header.get("format") != INDEX_FORMAT:
            raise CorruptChunkError(f"the content index is of format {header.get('format')!r}")
        if content.digest(body) != header["digest"]:
            raise CorruptChunkError("the content index is damaged: its digest does not match")
        n_chunks, n_files, n_extents = header["chunks"], header["files"], header["extents"]
        view = memoryview(body)
        chunks, view = _hex_digests(view, n_chunks)
        files, view = _hex_digests(view, n_files)
        arrays = []
        for typecode, length in [
            ("Q", n_files),  # sizes
            ("I", n_files + 1),  # first_extent
            ("I", n_extents),  # extent_chunk
            ("I", n_extents),  # extent_offset
            ("I", n_extents),  # extent_length
            ("I", n_chunks + 1),  # chunk_first_ref
            ("I", n_extents),  # ref_extent
        ]:
            values = array(typecode)
            values.frombytes(view[: length * values.itemsize])
            if sys.byteorder != "little":
                values.byteswap()
            arrays.append(values)
            view = view[length * values.itemsize :]
        return cls(ImageConfig(**header["config"]), chunks, files, *arrays)

    def _arrays(self) -> list[array]:
        return [
            self._sizes,
            self._first_extent,
            self._extent_chunk,
            self._extent_offset,
            self._extent_length,
            self._chunk_first_ref,
            self._ref_extent,
        ]


def _hex_digests(view: memoryview, count: int) -> tuple[list[str], memoryview]:
    raw = bytes(view[: count * _DIGEST_BYTES]).hex()
    step = 2 * _DIGEST_BYTES
    return [raw[i : i + step] for i in range(0, len(raw), step)], view[count * _DIGEST_BYTES :]


def _little_endian(values: array) -> bytes:
    if sys.byteorder == "little":
        return values.tobytes()
    swapped = array(values.typecode, values)
    swapped.byteswap()
    return swapped.tobytes()


def index_key(image_id: str) -> str:
    return f"images/{image_id}/index"


def save(store: ChunkStore, image_id: str, index: ContentIndex) -> bytes:
    """Store the index compressed; returns what was stored."""
    blob = content.compress(index.to_bytes())
    store.put(index_key(image_id), blob)
    return blob


def from_stored(blob: bytes) -> ContentIndex:
    try:
        data = content.decompress(blob)
    except Exception as error:  # zstd's own error type, or a frame that is not zstd at all
        raise CorruptChunkError(f"the content index is damaged: {error}") from None
    return ContentIndex.from_bytes(data)


def load(store: ChunkStore, image_id: str) -> tuple[ContentIndex, bytes]:
    """The image's content index and its stored form. Where the store has none (an image
    published before images had one) or a damaged one, it is made from the manifest and stored."""
    try:
        blob = store.get(index_key(image_id))
        return from_stored(blob), blob
    except NotFoundError:
        pass
    except CorruptChunkError as error:
        log.warning("image %s: %s; making it again from the manifest", image_id, error)
        store.delete(index_key(image_id))
    made = ContentIndex.from_manifest(manifest.load(store, image_id))
    return made, save(store, image_id, made)
