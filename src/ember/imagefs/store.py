"""The chunk store: a flat map from keys to immutable bytes, shared by builders and workers.

Keys are `/`-separated names such as `chunks/<digest>` or `images/<id>/manifest`. Values never
change once written (they are named by their content or by the content they describe), so a
`put` of an existing key may skip the write, and readers may cache forever.

Backends:
- `LocalChunkStore`: a directory (`file:///path`), the embedded default. Writes go to a temporary
  file and are renamed into place, so a reader never sees half a value.
- `S3ChunkStore` (`ember.imagefs.s3_store`): any S3-compatible object storage
  (`s3://bucket/prefix?endpoint_url=http://host:port`), credentials from the usual AWS variables.

`open_store(url)` picks one. Every backend passes the contract suite in
`tests/unit/imagefs/test_store_contract.py`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from ember.errors import InvalidError, NotFoundError


class ChunkStore(Protocol):
    """Lifecycle: `open_store(url)`, then any method from any thread, then `close()`.

    Every method blocks; callers on an event loop run them in a thread.
    """

    url: str  # what `open_store` needs to reach this store from another process or host

    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, atomically; a no-op if `key` already holds a value."""
        ...

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        """The value under `key`, or its `length` bytes from `start` (fewer where it ends);
        NotFoundError if there is none."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove `key`; no error if it is absent."""
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """Every key starting with `prefix`, in no particular order."""
        ...

    def close(self) -> None: ...


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidError(f"invalid chunk store key {key!r}")
    return key


class LocalChunkStore:
    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.url = self.root.as_uri()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        try:
            with self._path(key).open("rb") as file:
                file.seek(start)
                return file.read(-1 if length is None else length)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFoundError(f"{key} is not in the chunk store at {self.url}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[str]:
        base = self.root / prefix.rpartition("/")[0]
        if not base.is_dir():
            return
        for directory, _, files in os.walk(base):
            for name in files:
                if name.startswith(".incoming-"):
                    continue
                key = os.path.relpath(os.path.join(directory, name), self.root)
                if key.startswith(prefix):
                    yield key

    def close(self) -> None:
        pass


def open_store(url: str) -> ChunkStore:
    """The chunk store at `url`: `file:///path`, a plain path, or `s3://bucket[/prefix]?...`."""
    scheme = urlsplit(url).scheme
    if scheme in ("", "file"):
        return LocalChunkStore(Path(urlsplit(url).path if scheme else url))
    if scheme == "s3":
        from ember.imagefs.s3_store import S3ChunkStore  # boto3 loads only when asked for

        return S3ChunkStore.from_url(url)
    raise InvalidError(f"unsupported chunk store URL {url!r}: use file:///path or s3://bucket")
