"""What every part of the `Ember` service holds: the control plane it calls."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from ember.control.server import ControlPlane

Context = grpc.aio.ServicerContext


class PlaneService:
    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane
