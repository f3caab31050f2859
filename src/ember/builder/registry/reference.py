"""Image references (`python:3.11`, `ghcr.io/o/i:t`, `r:5000/a@sha256:…`) and registry URLs."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ember.errors import InvalidError

DOCKER_HUB = "registry-1.docker.io"
# Names people use for Docker Hub; the API itself lives on DOCKER_HUB.
_DOCKER_HUB_NAMES = {"docker.io", "index.docker.io", DOCKER_HUB}
# Registries on this machine serve plain HTTP, like Docker's built-in exception for them.
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "[::1]"}

# The grammar of Docker's reference parser (distribution/reference), enough to reject typos early.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"\w[\w.-]{0,127}")
DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")
_HOST_RE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d+)?")


@dataclass(frozen=True)
class ImageReference:
    """A parsed image reference: where the image lives and which version of it."""

    registry: str  # host[:port] to connect to
    repository: str
    tag: str | None
    digest: str | None

    @property
    def version(self) -> str:
        """What to ask the registry for: the digest when given (it pins the content), else the tag."""
        return self.digest or self.tag or "latest"


def parse_reference(reference: str) -> ImageReference:
    """Parse `reference` the way Docker does (`python:3.11`, `ghcr.io/o/i:t`, `r:5000/a@sha256:…`)."""
    name, _, digest = reference.partition("@")
    if digest and not DIGEST_RE.fullmatch(digest):
        raise InvalidError(f"image reference {reference!r} has a malformed digest {digest!r}")
    registry, path = _split_registry(name)
    path, tag = _split_tag(path)
    if not _HOST_RE.fullmatch(registry):
        raise InvalidError(f"image reference {reference!r} has a malformed registry {registry!r}")
    if not _REPOSITORY_RE.fullmatch(path):
        raise InvalidError(
            f"image reference {reference!r} has a malformed repository {path!r} "
            "(lowercase letters, digits and . _ - separators only)"
        )
    if tag is not None and not _TAG_RE.fullmatch(tag):
        raise InvalidError(f"image reference {reference!r} has a malformed tag {tag!r}")
    if tag is None and not digest:
        tag = "latest"
    return ImageReference(registry, path, tag, digest or None)


def _split_registry(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    # Docker's rule: the first component names a registry only if it cannot be a user name.
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = "docker.io", name
    if registry in _DOCKER_HUB_NAMES:
        registry = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"  # official images live under library/
    return registry, path


def _split_tag(path: str) -> tuple[str, str | None]:
    head, colon, tag = path.rpartition(":")
    if colon and "/" not in tag:
        return head, tag
    return path, None


def registry_url(registry: str, *, insecure: bool = False) -> str:
    """The base URL of `registry`: plain HTTP for this machine or when `insecure`, else HTTPS."""
    if registry.startswith("["):
        host = registry[: registry.index("]") + 1]  # an IPv6 address keeps its brackets
    else:
        host = registry.partition(":")[0]
    scheme = "http" if insecure or host in _LOCAL_HOSTS else "https"
    return f"{scheme}://{registry}"
