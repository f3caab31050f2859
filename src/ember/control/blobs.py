"""The blob store: large payloads (over 2 MiB) and app sources, addressed by content.

`BlobStore` is the seam; `LocalBlobStore` keeps blobs in a directory (the embedded default).
A blob's id is `bl-` plus the BLAKE3 digest of its bytes, so putting the same bytes twice stores
them once. Writes go to a temporary file, are hashed, then renamed into place: a reader never
sees half a blob.

Blobs are deleted by the expiry loop (`ember.control.expiry`) once no row names them and they are
old enough. A blob's age is its last upload's: putting the same bytes again replaces the file, so
a blob about to be named again (uploaded, its call not yet made) is young again and is kept.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import blake3

from ember import errors

CHUNK_SIZE = 1 << 20
_INCOMING = ".incoming-"


@dataclass(frozen=True)
class StoredBlob:
    blob_id: str
    uploaded_at: float  # seconds since the epoch, of the last put of these bytes
    size: int


class BlobStore(Protocol):
    async def put(self, chunks: AsyncIterator[bytes]) -> str:
        """Store the concatenated chunks; returns the blob id."""
        ...

    def get(self, blob_id: str) -> AsyncIterator[bytes]:
        """The blob's bytes in chunks; NotFoundError if there is no such blob."""
        ...

    async def list(self) -> list[StoredBlob]:
        """Every stored blob, with its age and size."""
        ...

    def delete(self, blob_id: str, uploaded_before: float) -> int:
        """Delete the blob unless it was put at or after `uploaded_before` (put again since it
        was listed); returns the bytes freed, 0 if it was kept or already gone. Synchronous, so
        that on the event loop no put can land between its check and its removal."""
        ...

    async def delete_stale_uploads(self, started_before: float) -> int:
        """Remove what uploads cut off by a crash left behind; returns the bytes freed."""
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
        fd, temp = tempfile.mkstemp(dir=self._root, prefix=_INCOMING)
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

    async def list(self) -> list[StoredBlob]:
        return await asyncio.to_thread(self._list)

    def _list(self) -> list[StoredBlob]:
        found = []
        for directory in self._root.iterdir():
            if not directory.is_dir() or len(directory.name) != 2:
                continue
            with os.scandir(directory) as entries:
                for entry in entries:
                    if len(entry.name) != 64 or not entry.name.startswith(directory.name):
                        continue  # not a blob this store wrote
                    try:
                        stat = entry.stat()
                    except FileNotFoundError:
                        continue  # deleted meanwhile
                    found.append(StoredBlob("bl-" + entry.name, stat.st_mtime, stat.st_size))
        return found

    def delete(self, blob_id: str, uploaded_before: float) -> int:
        path = self._path(blob_id)
        try:
            stat = path.stat()
            if stat.st_mtime >= uploaded_before:
                return 0
            path.unlink()
        except FileNotFoundError:
            return 0
        return stat.st_size

    async def delete_stale_uploads(self, started_before: float) -> int:
        return await asyncio.to_thread(self._delete_stale_uploads, started_before)

    def _delete_stale_uploads(self, started_before: float) -> int:
        freed = 0
        for path in self._root.glob(_INCOMING + "*"):
            try:
                stat = path.stat()
                if stat.st_mtime < started_before:  # still growing if a put is writing it
                    path.unlink()
                    freed += stat.st_size
            except FileNotFoundError:
                continue
        return freed
