"""Pull a container image from a registry and unpack it into a directory.

`Image.from_registry("python:3.11-slim")` builds on an image someone else published. This package
does the pull without Docker or containerd: it speaks the registry HTTP API (the OCI distribution
spec, which Docker Hub, GHCR, ECR, GCR and `docker-registry` all serve), resolves a multi-platform
index to the manifest for this machine, downloads each layer while checking its digest, and
applies the layers in order onto one directory with the overlay whiteout rules, so that the
directory ends up as the root file system the image describes. The image's config (environment,
working directory, entrypoint, command, user) comes back so containers start the way the image's
author meant.

- `reference`: parsing image references, and the URL of a registry;
- `client`: HTTP to a registry, with basic and token authentication;
- `documents`: manifests and configs read with a size limit and checked against their digests;
- `manifests`, `platforms`: from a reference to the manifest for this machine;
- `config`: the image config;
- `layers`: unpacking layers, with whiteouts, never writing outside the image;
- `pull`: `pull_image`, which does all of it.
"""

from ember.builder.registry.config import RegistryImageConfig
from ember.builder.registry.manifests import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
)
from ember.builder.registry.pull import pull_image
from ember.builder.registry.reference import (
    DOCKER_HUB,
    ImageReference,
    parse_reference,
    registry_url,
)

__all__ = [
    "DOCKER_HUB",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "ImageReference",
    "RegistryImageConfig",
    "parse_reference",
    "pull_image",
    "registry_url",
]
