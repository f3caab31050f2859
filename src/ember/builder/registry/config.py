"""The image config: how the image's author meant its containers to start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ember.builder.registry.client import RegistryClient
from ember.builder.registry.documents import (
    MAX_DOCUMENT_BYTES,
    descriptor_digest,
    load_json,
    read_limited,
    verify_document,
)
from ember.errors import InvalidError

_CONFIG_TYPES = {
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
}


@dataclass(frozen=True)
class RegistryImageConfig:
    """What an image says about how to run it, from its config blob."""

    env: dict[str, str]
    workdir: str
    entrypoint: list[str]
    cmd: list[str]
    user: str


def fetch_config(registry: RegistryClient, manifest: dict[str, Any]) -> RegistryImageConfig:
    descriptor = manifest.get("config")
    if not isinstance(descriptor, dict):
        raise InvalidError(f"image {registry.name} has a manifest without a config")
    media_type = descriptor.get("mediaType")
    if media_type not in _CONFIG_TYPES:
        # Helm charts, signatures and other artifacts use the same manifests with other configs.
        raise InvalidError(
            f"{registry.name} is not a container image (its config has type {media_type!r})"
        )
    digest = descriptor_digest(descriptor, registry.name)
    with registry.get(f"blobs/{digest}") as response:
        body = read_limited(response, MAX_DOCUMENT_BYTES, registry.name)
    verify_document(body, digest, registry.name)
    return _parse_config(load_json(body, "config", registry.name))


def _parse_config(document: dict[str, Any]) -> RegistryImageConfig:
    config = document.get("config") or {}
    env = {}
    for item in config.get("Env") or []:
        key, _, value = item.partition("=")
        env[key] = value
    return RegistryImageConfig(
        env=env,
        workdir=config.get("WorkingDir") or "/",
        entrypoint=list(config.get("Entrypoint") or []),
        cmd=list(config.get("Cmd") or []),
        user=config.get("User") or "",
    )
