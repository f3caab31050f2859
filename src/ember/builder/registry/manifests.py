"""Resolving a reference to the image manifest for this machine, through an index if needed."""

from __future__ import annotations

from typing import Any

from ember.builder.registry.client import RegistryClient
from ember.builder.registry.documents import (
    MAX_DOCUMENT_BYTES,
    load_json,
    read_limited,
    verify_document,
)
from ember.builder.registry.platforms import pick_platform
from ember.builder.registry.reference import DIGEST_RE
from ember.errors import InvalidError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_INDEX_TYPES = {OCI_INDEX, DOCKER_MANIFEST_LIST}
_MANIFEST_TYPES = {OCI_MANIFEST, DOCKER_MANIFEST}
# Without every type in Accept, registries fall back to converting to Docker schema 1 (or refuse).
_MANIFEST_ACCEPT = ", ".join([OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST])
# An index could point to another index; real images use one level, this bounds a loop.
_MAX_INDEX_DEPTH = 3


def resolve_manifest(registry: RegistryClient) -> dict[str, Any]:
    """The image manifest for this machine, going through an index if the image has one."""
    media_type, document = _fetch_manifest(registry, registry.ref.version)
    for _ in range(_MAX_INDEX_DEPTH):
        kind = _manifest_kind(media_type, document, registry.name)
        if kind == "manifest":
            return document
        descriptor = pick_platform(document, registry.name)
        media_type, document = _fetch_manifest(registry, descriptor["digest"])
    raise InvalidError(f"image {registry.name} has indexes nested too deep to resolve")


def _fetch_manifest(registry: RegistryClient, version: str) -> tuple[str, dict[str, Any]]:
    with registry.get(f"manifests/{version}", accept=_MANIFEST_ACCEPT) as response:
        body = read_limited(response, MAX_DOCUMENT_BYTES, registry.name)
        content_type = response.headers.get("Content-Type", "").partition(";")[0].strip()
    if DIGEST_RE.fullmatch(version):
        # Asked for by digest, the manifest must be exactly that one: this is what pins layers.
        verify_document(body, version, registry.name)
    document = load_json(body, f"manifest {version}", registry.name)
    media_type = document.get("mediaType") or content_type
    return media_type, document


def _manifest_kind(media_type: str, document: dict[str, Any], name: str) -> str:
    if media_type in _INDEX_TYPES:
        return "index"
    if media_type in _MANIFEST_TYPES:
        return "manifest"
    if "schemaVersion" in document and document.get("schemaVersion") == 1:
        raise InvalidError(
            f"image {name} uses the Docker schema 1 manifest format, which is not supported; "
            "push it again with a current Docker"
        )
    # `mediaType` is optional in OCI documents and some registries send application/json.
    if isinstance(document.get("manifests"), list):
        return "index"
    if isinstance(document.get("layers"), list):
        return "manifest"
    raise InvalidError(f"image {name} has a manifest of unsupported type {media_type!r}")
