"""`ember server` and `ember worker`: the long-lived services of a cluster."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

from ember import config


def _serve_until_signalled(service: Coroutine[Any, Any, None]) -> None:
    """Run a service until SIGTERM or SIGINT, then let it clean up. A service that ends any other
    way failed: the process exits with 1 (a supervisor starts it again), never with 0."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    signalled = False

    async def main() -> None:
        nonlocal signalled
        task = asyncio.ensure_future(service)
        loop = asyncio.get_running_loop()

        def stop() -> None:
            nonlocal signalled
            signalled = True
            task.cancel()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    if not signalled:
        # Its failure is in the log (the service logs it as it stops); the cancellation that
        # ended it may have hidden the error from here.
        logging.getLogger("ember").error("the service stopped without being asked to")
        raise SystemExit(1)


def server(
    address: Annotated[str, typer.Option(help="host:port to listen on")] = "127.0.0.1:7750",
    data_dir: Annotated[Path | None, typer.Option(help="Where state lives")] = None,
) -> None:
    """Run the control plane."""
    from ember.control.server import serve

    _serve_until_signalled(serve(data_dir or config.data_dir(), address))


def worker(
    server: Annotated[str, typer.Option(help="The control plane's host:port")],
    data_dir: Annotated[Path | None, typer.Option(help="Where containers and caches live")] = None,
    cpu: Annotated[float | None, typer.Option(help="Cores to offer (default: all)")] = None,
    memory: Annotated[
        int | None, typer.Option(help="MiB to offer (default: all less 1 GiB)")
    ] = None,
) -> None:
    """Run a worker agent on this host (needs root: it runs containers)."""
    from ember.worker.agent import HostResources, Worker

    detected = HostResources.detect()
    resources = HostResources(cpu or detected.cpu, memory or detected.memory_mb)
    _serve_until_signalled(Worker(server, data_dir or config.data_dir(), resources).run())


def register(cli: typer.Typer) -> None:
    cli.command()(server)
    cli.command()(worker)
