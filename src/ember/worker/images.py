"""Where a container's root file system comes from: the one seam between the worker and images.

Every function runs on the ember base image for now (`BaseImageRoots`). Images defined in code,
stored by content and served lazily, replace what stands behind `ImageRoots` without the rest
of the worker changing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol

from ember.builder import ensure_base_image
from ember.proto import api_pb2


class ImageRoots(Protocol):
    """Lifecycle: `prepare()` once when the worker starts (it may build or fetch for a long
    time), then `root_for()` on every container start (it must be fast)."""

    async def prepare(self) -> None: ...

    async def root_for(self, function: api_pb2.FunctionDefinition) -> Path:
        """The read-only root file system for the function's image (the overlay's lower dir)."""
        ...


class BaseImageRoots:
    """Every function on the ember base image (built once per machine)."""

    async def prepare(self) -> None:
        await asyncio.to_thread(ensure_base_image)

    async def root_for(self, function: api_pb2.FunctionDefinition) -> Path:
        return ensure_base_image()  # cached by prepare(): microseconds
