"""App sources on this host: each source blob is fetched once and unpacked into its own directory,
which containers mount read-only."""

from __future__ import annotations

import asyncio
import io
import shutil
import tarfile
import tempfile
from pathlib import Path

from ember.client import Connection
from ember.client.blobs import download


def _unpack(data: bytes, target: Path) -> None:
    """Unpack a source tar: regular files at relative paths only, nothing else."""
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in archive.getmembers():
            path = Path(member.name)
            if not member.isfile() or path.is_absolute() or ".." in path.parts:
                raise ValueError(f"source archive holds an unsafe entry: {member.name!r}")
            destination = target / path
            destination.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None
            destination.write_bytes(source.read())


class SourceCache:
    def __init__(self, root: Path, conn: Connection) -> None:
        self._root = root
        self._conn = conn
        self._locks: dict[str, asyncio.Lock] = {}
        root.mkdir(parents=True, exist_ok=True)

    async def ensure(self, blob_id: str) -> Path:
        """The directory holding the unpacked source blob."""
        target = self._root / blob_id
        if target.is_dir():
            return target
        async with self._locks.setdefault(blob_id, asyncio.Lock()):
            if target.is_dir():
                return target
            data = await download(self._conn, blob_id)
            staging = Path(tempfile.mkdtemp(dir=self._root, prefix=".unpack-"))
            # Readable by all: container root, which reads it at /app, is no host user.
            staging.chmod(0o755)
            try:
                _unpack(data, staging)
                staging.rename(target)  # atomic: a half-unpacked source is never mounted
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return target
