"""Choosing, from a multi-platform index, the manifest for this machine."""

from __future__ import annotations

import platform
from typing import Any

from ember.builder.registry.documents import descriptor_digest
from ember.errors import InvalidError

_ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def _host_architecture() -> str:
    machine = platform.machine().lower()
    return _ARCHITECTURES.get(machine, machine)


def pick_platform(index: dict[str, Any], name: str) -> dict[str, Any]:
    """The index entry for linux on this machine's architecture."""
    architecture = _host_architecture()
    entries = [e for e in index.get("manifests") or [] if isinstance(e, dict)]
    matches = [
        e
        for e in entries
        if _platform(e).get("os") == "linux" and _platform(e).get("architecture") == architecture
    ]
    if not matches:
        # Attestations and signatures sit in indexes as unknown/unknown; they are not choices.
        available = sorted(
            {_platform_name(e) for e in entries if _platform(e).get("os") != "unknown"}
        )
        raise InvalidError(
            f"image {name} has no linux/{architecture} variant for this machine "
            f"(it has: {', '.join(available) or 'none'})"
        )
    # Prefer the baseline arm64 variant (v8, or none stated) that every arm64 machine runs.
    matches.sort(key=lambda e: _platform(e).get("variant") not in (None, "", "v8"))
    descriptor = matches[0]
    descriptor_digest(descriptor, name)
    return descriptor


def _platform(entry: dict[str, Any]) -> dict[str, Any]:
    platform = entry.get("platform")
    return platform if isinstance(platform, dict) else {}


def _platform_name(entry: dict[str, Any]) -> str:
    p = _platform(entry)
    parts = [p.get("os", "?"), p.get("architecture", "?"), p.get("variant")]
    return "/".join(str(part) for part in parts if part)
