"""Manifests and configs as they arrive: size-limited, JSON objects, checked against digests."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx

from ember.builder.registry.reference import DIGEST_RE
from ember.errors import ExecutionError, InvalidError

# The distribution spec lets registries refuse manifests over 4 MiB; configs are as small.
MAX_DOCUMENT_BYTES = 4 << 20


def read_limited(response: httpx.Response, limit: int, name: str) -> bytes:
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > limit:
            raise InvalidError(f"image {name}: a manifest or config is larger than {limit} bytes")
    return bytes(body)


def load_json(body: bytes, what: str, name: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise InvalidError(f"image {name} has a {what} that is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidError(f"image {name} has a {what} that is not a JSON object")
    return document


def descriptor_digest(descriptor: dict[str, Any], name: str) -> str:
    """The descriptor's digest, checked: it goes into URLs and must name content, nothing else."""
    digest = descriptor.get("digest")
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise InvalidError(f"image {name} has a descriptor with a malformed digest {digest!r}")
    return digest


def verify_document(body: bytes, digest: str, name: str) -> None:
    algorithm, _, expected = digest.partition(":")
    if hashlib.new(algorithm, body).hexdigest() != expected:
        raise ExecutionError(f"image {name}: {digest} arrived with different content; try again")
