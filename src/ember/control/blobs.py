"""The blob store: large payloads (over 2 MiB) and app sources, addressed by content.

`BlobStore` is the seam; `LocalBlobStore` keeps blobs in a directory (the embedded default).
A blob's id is `bl-` plus the BLAKE3 digest of its bytes, so putting the same bytes twice stores
them once. Writes go to a temporary file, are hashed, then renamed into place: a reader never
sees half a blob.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import blake3

from ember import errors

CHUNK_SIZE = 1 << 20


class BlobStore(Protocol):
    async def put(self, chunks: AsyncIterator[bytes]) -> str:
        """Store the concatenated chunks; returns the blob id."""
        ...

    def get(self, blob_id: str) -> AsyncIterator[bytes]:
        """The blob's bytes in chunks; NotFoundError if there is no such blob."""
        ...


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, blob_id: str) -> Path:
        digest = blob_id.removeprefix("bl-")
        if not blob_id.startswith("bl-") or len(digest) != 64 or not digest.isalnum():
            raise errors.NotFoundError(f"blob {blob_id!r} not found")
        return self._root / digest[:2] / digest

    async def put(self, chunks: AsyncIterator[bytes]) -> str:
        hasher = blake3.blake3()
        fd, temp = tempfile.mkstemp(dir=self._root, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as file:
                async for chunk in chunks:
                    hasher.update(chunk)
                    file.write(chunk)
            blob_id = "bl-" + hasher.hexdigest()
            path = self._path(blob_id)
            path.parent.mkdir(exist_ok=True)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return blob_id

    async def get(self, blob_id: str) -> AsyncIterator[bytes]:
        path = self._path(blob_id)
        try:
            file = path.open("rb")
        except FileNotFoundError:
            raise errors.NotFoundError(f"blob {blob_id!r} not found") from None
        with file:
            while chunk := file.read(CHUNK_SIZE):
                yield chunk
