"""How content is named, compressed and checked: BLAKE3 digests, zstd in the chunk store.

A chunk is at most `CHUNK_SIZE` bytes, stored compressed under `chunks/<digest>` where the digest
is that of the uncompressed bytes. Whoever fetches a chunk checks the digest before using it, so a
corrupted or truncated object is refused, never served.
"""

from __future__ import annotations

import threading

import blake3
import zstandard

from ember.errors import ExecutionError

# The unit of lazy fetching: one read of a page fetches the one chunk holding it. 1 MiB costs
# about the same latency as 64 KiB from object storage and is the kernel's largest FUSE read.
CHUNK_SIZE = 1 << 20

_ZSTD_LEVEL = 3
_local = threading.local()  # zstd contexts are not thread-safe; one pair per thread


class CorruptChunkError(ExecutionError):
    """A chunk's bytes do not match its digest."""


def digest(data: bytes | memoryview) -> str:
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()


def chunk_key(chunk_digest: str) -> str:
    return f"chunks/{chunk_digest}"


def compress(data: bytes | memoryview) -> bytes:
    compressor = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = _local.compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    return compressor.compress(data)


def decompress(blob: bytes) -> bytes:
    decompressor = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return decompressor.decompress(blob)


def open_chunk(chunk_digest: str, blob: bytes) -> bytes:
    """The chunk's bytes from its stored form; CorruptChunkError unless they match the digest."""
    try:
        data = decompress(blob)
    except zstandard.ZstdError as error:
        raise CorruptChunkError(f"chunk {chunk_digest} is corrupted: {error}") from None
    if digest(data) != chunk_digest:
        raise CorruptChunkError(f"chunk {chunk_digest} is corrupted: its digest does not match")
    return data


def blake3_hasher() -> blake3.blake3:
    return blake3.blake3(max_threads=blake3.blake3.AUTO)
