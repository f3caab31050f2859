"""`ember cluster status|stop`: the local cluster that `ember run` starts."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from ember import config
from ember.client import local_cluster
from ember.proto import api_pb2
from ember.sdk._calls import connection
from ember.sdk._sync import run_blocking

group = typer.Typer(help="Manage the local cluster.", no_args_is_help=True)


async def _status() -> api_pb2.ClusterStatusResponse:
    conn = await connection()
    return await conn.call(conn.ember.ClusterStatus, api_pb2.ClusterStatusRequest(), retry=False)


@group.command("status")
def status() -> None:
    """Show the cluster's control plane and workers."""
    console = Console()
    if config.server_url() is None:
        cluster = local_cluster.running()
        if cluster is None:
            console.print("the local cluster is not running (`ember run` starts it)")
            return

        def pid(value: int) -> str:
            return str(value) if value else "(starting again)"

        console.print(
            f"local cluster at {cluster.address}: supervisor pid {cluster.supervisor_pid}, "
            f"control plane pid {pid(cluster.control_pid)}, worker pid {pid(cluster.worker_pid)}, "
            f"data in {config.data_dir()}"
        )
    table = Table("Worker", "Host", "CPU used/total", "Memory used/total (MiB)", "Containers")
    for worker in run_blocking(_status()).workers:
        table.add_row(
            worker.worker_id,
            worker.hostname,
            f"{worker.used.cpu:g}/{worker.capacity.cpu:g}",
            f"{worker.used.memory_mb}/{worker.capacity.memory_mb}",
            str(worker.containers),
        )
    console.print(table)


@group.command("stop")
def stop() -> None:
    """Stop the local cluster: its worker removes every container, then the control plane and
    the imagefs daemon stop, and nothing of it stays on the host."""
    stopped = local_cluster.stop()
    message = "stopped the local cluster" if stopped else "the local cluster was not running"
    Console(stderr=True).print(message)
