"""The client side of the wire: a connection to the control plane, blobs, the local cluster."""

from __future__ import annotations

from ember import config
from ember.client import local_cluster
from ember.client.connection import Connection


def server_address() -> str:
    """The configured control plane, else the local cluster (started if it is not running)."""
    return config.server_url() or local_cluster.ensure_running().address


def connect(address: str) -> Connection:
    """A connection to `address`, as `server_address` found it (made on the event loop that
    will use it). To the local cluster, it starts the cluster again should it go while the
    connection waits for it."""
    connection = Connection(address)
    if not config.server_url():
        connection.revive = local_cluster.ensure_running
    return connection


__all__ = ["Connection", "connect", "local_cluster", "server_address"]
