"""A real registry for tests: Debian's `docker-registry` on a free port, and images pushed to it.

Images are built in Python (tar layers, config, manifests) and pushed over the registry's HTTP
API, so every byte of what is pulled is known. Used by the registry client's unit tests and by
the end-to-end tests of `Image.from_registry` and `Image.from_dockerfile`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest

from ember.builder.registry import DOCKER_MANIFEST

REGISTRY_BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"

DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MTIME = 1_600_000_000
USER, PASSWORD = "alice", "s3cret"

_CHUNK = 1 << 20


# --- building images ------------------------------------------------------------------------------


@dataclass
class Entry:
    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    linkname: str = ""
    uid: int = 0
    gid: int = 0
    pax: dict[str, str] = field(default_factory=dict)


def file(name: str, data: bytes = b"", **kw: Any) -> Entry:
    return Entry(name, tarfile.REGTYPE, data, **kw)


def directory(name: str, mode: int = 0o755) -> Entry:
    return Entry(name, tarfile.DIRTYPE, mode=mode)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, tarfile.SYMTYPE, mode=0o777, linkname=target)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, tarfile.LNKTYPE, linkname=target)


def tar_bytes(entries: list[Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = entry.kind
            info.mode = entry.mode
            info.mtime = MTIME
            info.uid, info.gid = entry.uid, entry.gid
            info.linkname = entry.linkname
            info.pax_headers = dict(entry.pax)
            info.size = len(entry.data) if entry.kind == tarfile.REGTYPE else 0
            archive.addfile(info, io.BytesIO(entry.data) if info.size else None)
    return buffer.getvalue()


def gzip_layer(entries: list[Entry]) -> bytes:
    return gzip.compress(tar_bytes(entries), mtime=0)


def gzip_tree_layer(root: Path, layer: Path) -> None:
    """Write a directory tree as one gzip layer file, streaming: a root file system is large.

    Owners are numeric (names would be looked up on the host), hard links stay links, and device
    nodes, fifos and sockets are left out, as in real images (the runtime provides /dev).
    """

    # Level 1: a test spends its time on the pull, not on squeezing the layer.
    with (
        layer.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w|", format=tarfile.PAX_FORMAT) as archive,
    ):
        for directory_path, directories, files in os.walk(root):
            directories.sort()
            for name in [*directories, *sorted(files)]:
                path = Path(directory_path, name)
                info = archive.gettarinfo(path, str(path.relative_to(root)))
                if info is None or info.ischr() or info.isblk() or info.isfifo():
                    continue  # None: a socket
                info.uname = info.gname = ""
                if info.isreg():
                    with path.open("rb") as source:
                        archive.addfile(info, source)
                else:
                    archive.addfile(info)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    with path.open("rb") as source:
        return "sha256:" + hashlib.file_digest(source, "sha256").hexdigest()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **extra}


def config_blob(architecture: str = "amd64", **config: Any) -> bytes:
    document = {"architecture": architecture, "os": "linux", "config": config, "rootfs": {}}
    return json.dumps(document).encode()


# --- the registry ---------------------------------------------------------------------------------


@dataclass
class Registry:
    """A running docker-registry and how to push to it."""

    host: str  # 127.0.0.1:port
    storage: Path
    auth: tuple[str, str] | None = None
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        # One client for every push: creating one costs tens of milliseconds (TLS set-up).
        self.http = httpx.Client(base_url=f"http://{self.host}", auth=self.auth, timeout=10)

    def push_blob(self, repository: str, data: bytes) -> str:
        """Monolithic upload: open an upload session, then PUT the whole blob with its digest."""
        digest = digest_of(data)
        self._upload(repository, digest, data, len(data))
        return digest

    def push_blob_file(self, repository: str, path: Path) -> str:
        """`push_blob` for a large blob: the file streams to the registry, never all in memory."""
        digest = file_digest(path)
        with path.open("rb") as source:
            chunks = iter(lambda: source.read(_CHUNK), b"")
            self._upload(repository, digest, chunks, path.stat().st_size)
        return digest

    def _upload(self, repository: str, digest: str, content: Any, size: int) -> None:
        started = self.http.post(f"/v2/{repository}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        separator = "&" if "?" in location else "?"
        done = self.http.put(
            f"{location}{separator}digest={digest}",
            content=content,
            # A stated length, so that a streamed body goes whole rather than chunked.
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        assert done.status_code == 201, done.text

    def push_manifest(self, repository: str, reference: str, document: dict[str, Any]) -> str:
        body = json.dumps(document).encode()
        response = self.http.put(
            f"/v2/{repository}/manifests/{reference}",
            content=body,
            headers={"Content-Type": document["mediaType"]},
        )
        assert response.status_code == 201, response.text
        return digest_of(body)

    def push_image(
        self,
        repository: str,
        reference: str,
        layers: list[bytes],
        config: bytes,
        *,
        media_type: str = DOCKER_MANIFEST,
        layer_type: str = DOCKER_LAYER,
    ) -> dict[str, Any]:
        """Push blobs and a manifest; returns the manifest's descriptor (for an index)."""
        for blob in [*layers, config]:
            self.push_blob(repository, blob)
        config_type = DOCKER_CONFIG if media_type == DOCKER_MANIFEST else OCI_CONFIG
        manifest = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": descriptor(config_type, config),
            "layers": [descriptor(layer_type, layer) for layer in layers],
        }
        digest = self.push_manifest(repository, reference, manifest)
        body = json.dumps(manifest).encode()
        return {"mediaType": media_type, "digest": digest, "size": len(body)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def skip_without_registry() -> None:
    if not os.access(REGISTRY_BINARY, os.X_OK):
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")


def write_htpasswd(path: Path, user: str = USER, password: str = PASSWORD) -> Path:
    # Cost 4, the least bcrypt allows: the registry checks the hash on every request.
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"{user}:{hashed}\n")
    return path


@contextlib.contextmanager
def start_registry(root: Path, htpasswd: Path | None = None) -> Iterator[Registry]:
    """Run docker-registry with its files under `root` (created); with `htpasswd`, it lets in
    USER with PASSWORD only, and the Registry returned pushes as them."""
    port = free_port()
    root.mkdir()
    auth = f"auth:\n  htpasswd:\n    realm: ember-test\n    path: {htpasswd}\n" if htpasswd else ""
    (root / "config.yml").write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + auth
    )
    log = (root / "registry.log").open("wb")
    process = subprocess.Popen(
        [REGISTRY_BINARY, "serve", str(root / "config.yml")], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code in (200, 401):
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"docker-registry did not start: {(root / 'registry.log').read_text()}")
            time.sleep(0.02)
        registry = Registry(
            f"127.0.0.1:{port}", root / "storage", (USER, PASSWORD) if htpasswd else None
        )
        try:
            yield registry
        finally:
            registry.http.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
