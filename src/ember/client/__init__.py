"""The client side of the wire: a connection to the control plane, blobs, the local cluster."""

from __future__ import annotations

from ember import config
from ember.client import local_cluster
from ember.client.connection import Connection


def server_address() -> str:
    """The configured control plane, else the local cluster (started if it is not running)."""
    return config.server_url() or local_cluster.ensure_running().address


__all__ = ["Connection", "local_cluster", "server_address"]
