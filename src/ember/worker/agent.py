"""The worker agent: one per host. Registers the host, takes orders, runs containers, heartbeats.

On start it first removes whatever a previous life of the worker left on the host (containers,
mounts, cgroups, runc state): the control plane learns from the next heartbeats that those
containers are gone and runs their inputs again. Its loops run under one task group; when the
control plane restarts, the order stream breaks and the worker registers again with the same id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import grpc

from ember import errors
from ember.builder.build import BuildHost
from ember.client import Connection
from ember.client.blobs import download
from ember.container import RuncRuntime, Runtime
from ember.imagefs.store import open_store
from ember.proto import api_pb2
from ember.worker.builds import Builds
from ember.worker.container_start import ContainerStarter
from ember.worker.container_task import ContainerTask
from ember.worker.images import ImageFSRoots
from ember.worker.logs import LogShipper
from ember.worker.package import compiled_package
from ember.worker.sources import SourceCache
from ember.worker.standby import StandbyPool, limit_from_env

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
RECONNECT_S = 0.5


@dataclass(frozen=True)
class HostResources:
    cpu: float
    memory_mb: int

    @classmethod
    def detect(cls) -> HostResources:
        """All cores, and the memory less 1 GiB kept for the host itself."""
        total_kb = 0
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    total_kb = int(line.split()[1])
        return cls(float(os.cpu_count() or 1), max(256, total_kb // 1024 - 1024))


class Worker:
    def __init__(
        self, server: str, data_dir: Path, resources: HostResources, runtime: Runtime | None = None
    ) -> None:
        self._dir = data_dir / "worker"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._server = server
        self._resources = resources
        self._runtime = runtime or RuncRuntime(self._dir / "runtime")
        self._containers: dict[str, ContainerTask] = {}
        self._worker_id = ""
        self._registered = False  # once: the control plane learns this life began
        self._images = ImageFSRoots(data_dir / "imagefs")
        self._images.on_daemon_gone = self._retire_containers_of

    @property
    def worker_id(self) -> str:
        return self._worker_id

    async def run(self) -> None:
        # The channel belongs to the loop that runs the worker, so it is made here.
        self._conn = Connection(self._server)
        self._sources = SourceCache(self._dir / "sources", self._conn)
        self._logs = LogShipper(self._conn)
        removed = await self._runtime.cleanup_stale()
        if removed:
            log.info("removed %d containers left by a previous run", len(removed))
        ember_package = await asyncio.to_thread(compiled_package, self._dir / "package")
        self._starter = ContainerStarter(self._runtime, self._images, self._dir, ember_package)
        self._starter.clean()
        self._standbys = StandbyPool(self._starter, limit=limit_from_env())
        store_url = await self._register()
        await self._images.prepare(store_url)
        self._builds = Builds(
            BuildHost(
                runtime=self._runtime,
                imagefs=self._images.client,
                store=open_store(store_url),
                work_dir=self._dir / "builds",
                fetch_blob=lambda blob_id: download(self._conn, blob_id),
                ember_package=ember_package,
            ),
            self._conn,
        )
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._take_orders())
                group.create_task(self._heartbeat())
                group.create_task(self._logs.run())
        except Exception:
            # Logged here: the clean-up below may be cancelled, and then this error is lost.
            log.exception("the worker stops: one of its loops failed")
            raise
        finally:
            await self.stop_all()
            # What stopping missed (a container whose removal failed), and the runtime's
            # directory of root mount points: nothing is left on the host.
            await self._runtime.cleanup_stale()
            await self._conn.close()

    async def _register(self) -> str:
        """Register (again) with the control plane; returns the URL of its image store."""
        id_file = self._dir / "worker_id"
        previous = id_file.read_text().strip() if id_file.exists() else ""
        response = await self._conn.call(
            self._conn.workers.WorkerRegister,
            api_pb2.WorkerRegisterRequest(
                worker_id=previous,
                hostname=socket.gethostname(),
                capacity=api_pb2.Resources(
                    cpu=self._resources.cpu, memory_mb=self._resources.memory_mb
                ),
                started=not self._registered,
            ),
        )
        self._registered = True
        self._worker_id = response.worker_id
        id_file.write_text(self._worker_id)
        log.info(
            "registered as %s (%s cores, %s MiB)",
            self._worker_id,
            self._resources.cpu,
            self._resources.memory_mb,
        )
        return response.image_store_url

    async def _take_orders(self) -> None:
        while True:
            try:
                stream = self._conn.workers.WorkerOrders(
                    api_pb2.WorkerOrdersRequest(worker_id=self._worker_id)
                )
                async for order in stream:
                    self._obey(order)
            except grpc.aio.AioRpcError as error:
                log.warning("order stream broke (%s); reconnecting", error.code())
            await asyncio.sleep(RECONNECT_S)
            with contextlib.suppress(errors.Error):
                await self._register()

    def _obey(self, order: api_pb2.WorkerOrder) -> None:
        kind = order.WhichOneof("order")
        if kind == "build":
            self._builds.start(order.build)
        elif kind == "start":
            spec = order.start
            task = ContainerTask(
                spec,
                conn=self._conn,
                starter=self._starter,
                standbys=self._standbys,
                images=self._images,
                sources=self._sources,
                logs=self._logs,
            )
            self._containers[spec.container_id] = task
            task.start().add_done_callback(lambda _: self._containers.pop(spec.container_id, None))
        else:
            stopping = self._containers.get(order.stop_container_id)
            if stopping is not None:
                stopping.stop()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self._conn.call(
                    self._conn.workers.WorkerHeartbeat,
                    api_pb2.WorkerHeartbeatRequest(
                        worker_id=self._worker_id, container_ids=list(self._containers)
                    ),
                )
            except errors.NotFoundError:
                await self._register()
            except errors.Error as error:
                log.warning("heartbeat failed: %s", error)

    def _retire_containers_of(self, daemon: str) -> None:
        """The imagefs daemon whose mounts these containers stand on has ended: stop them before
        an input finds a file it cannot read (their running inputs run again elsewhere)."""
        for container in list(self._containers.values()):
            if container.image_daemon == daemon:
                container.stop(failed="the host's imagefs daemon, which served its image, ended")

    async def stop_all(self) -> None:
        """Stop every container (each reports its exit and removes what it made); their running
        inputs run again elsewhere."""
        containers = list(self._containers.values())
        for container in containers:
            container.stop(failed="the worker running the container stopped")
        await asyncio.gather(*(c.stopped() for c in containers), self._standbys.close())
