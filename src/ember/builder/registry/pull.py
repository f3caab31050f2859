"""`pull_image`: resolve the manifest, read the config, download and apply each layer."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ember.builder.registry.client import RegistryClient
from ember.builder.registry.config import RegistryImageConfig, fetch_config
from ember.builder.registry.documents import descriptor_digest
from ember.builder.registry.layers import layer_compression, unpack_layer
from ember.builder.registry.manifests import resolve_manifest
from ember.builder.registry.reference import parse_reference
from ember.errors import ExecutionError, InvalidError

_CHUNK = 1 << 20


def pull_image(
    reference: str,
    dest: Path,
    *,
    username: str | None = None,
    password: str | None = None,
    insecure: bool = False,
    progress: Callable[[str], None] | None = None,
) -> RegistryImageConfig:
    """Download `reference` and unpack its layers, in order, into the empty directory `dest`.

    `dest` is created if missing. On an error it is left partly filled; the caller removes it.
    `insecure` talks plain HTTP to the registry (for registries without TLS).
    """
    ref = parse_reference(reference)
    if (username is None) != (password is None):
        raise InvalidError("pass both username= and password= to pull an image, or neither")
    _prepare_destination(dest)
    report = progress or _ignore
    credentials = (username, password) if username is not None and password is not None else None
    with RegistryClient(ref, reference, credentials, insecure=insecure) as registry:
        try:
            manifest = resolve_manifest(registry)
            config = fetch_config(registry, manifest)
            _pull_layers(registry, manifest, dest, report)
        except httpx.RequestError as exc:
            raise ExecutionError(
                f"could not pull image {reference} from {ref.registry}: {exc}{_tls_hint(exc)}"
            ) from exc
    return config


def _ignore(_message: str) -> None:
    pass


def _tls_hint(exc: httpx.RequestError) -> str:
    if "ssl" in str(exc).lower() or "tls" in str(exc).lower():
        return " (if the registry serves plain HTTP, pass insecure=True)"
    return ""


def _prepare_destination(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise InvalidError(f"cannot pull an image into {dest}: the directory is not empty")


def _pull_layers(
    registry: RegistryClient, manifest: dict[str, Any], dest: Path, report: Callable[[str], None]
) -> None:
    layers = [layer for layer in manifest.get("layers") or [] if isinstance(layer, dict)]
    # Check every layer before downloading any, so an unusable image fails in a second, not late.
    compressions = [layer_compression(layer, registry.name) for layer in layers]
    for layer in layers:
        descriptor_digest(layer, registry.name)
    # Downloads go beside `dest`, on the disk meant for images, not into a possibly small /tmp.
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-download-") as scratch:
        blob = Path(scratch) / "layer"
        for number, (layer, compression) in enumerate(zip(layers, compressions, strict=True), 1):
            report(f"pulling layer {number}/{len(layers)} ({_megabytes(layer.get('size'))})")
            _download_blob(registry, layer, blob)
            unpack_layer(
                blob, compression, dest, f"layer {layer['digest']} of image {registry.name}"
            )
            blob.unlink()


def _megabytes(size: object) -> str:
    return f"{size / 1e6:.1f} MB" if isinstance(size, int) else "size unknown"


def _download_blob(registry: RegistryClient, descriptor: dict[str, Any], path: Path) -> None:
    """Stream the blob to `path`, refusing it unless its digest and size are the manifest's."""
    digest = descriptor["digest"]
    size = descriptor.get("size")
    algorithm, _, expected = digest.partition(":")
    hasher = hashlib.new(algorithm)
    received = 0
    with registry.get(f"blobs/{digest}") as response, path.open("wb") as out:
        for chunk in response.iter_bytes(_CHUNK):
            received += len(chunk)
            if isinstance(size, int) and received > size:
                raise ExecutionError(
                    f"layer {digest} of image {registry.name} is larger than its manifest says "
                    f"({size} bytes); nothing was unpacked from it"
                )
            hasher.update(chunk)
            out.write(chunk)
    if hasher.hexdigest() != expected:
        raise ExecutionError(
            f"layer {digest} of image {registry.name} arrived corrupted (its digest is "
            f"{algorithm}:{hasher.hexdigest()}); nothing was unpacked from it, try the pull again"
        )
