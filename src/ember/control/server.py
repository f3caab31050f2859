"""The control plane's composition root: builds every part and runs its loops in one task group.

store (SQL) ── dispatcher (input queue) ── scheduler (autoscaler + placement) ── cluster view
      ├── log hub            └── blob store
      └── expiry (finished calls, unnamed blobs and old log lines go; the file shrinks)
gRPC: `Ember` (SDK and CLI) and `Workers` (worker agents), both thin over these parts.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from ember.config import image_store_url, output_retention_s
from ember.control.api.ember_api import EmberService
from ember.control.api.workers_api import WorkersService
from ember.control.blobs import BlobStore, LocalBlobStore
from ember.control.clock import Clock, SystemClock
from ember.control.expiry import Expiry, RetentionPolicy
from ember.control.images import ImageBuilds
from ember.control.loghub import LogHub
from ember.control.queue.dispatcher import Dispatcher
from ember.control.scheduler.cluster import Cluster, FunctionInfo, LiveContainer, LiveWorker
from ember.control.scheduler.scheduler import Scheduler
from ember.control.store import LogLine, Store, sqlite_url
from ember.imagefs.store import ChunkStore, open_store
from ember.proto import api_pb2, api_pb2_grpc

log = logging.getLogger(__name__)

# Inline payloads are at most 2 MiB; batches of them need room above that.
MAX_MESSAGE_BYTES = 256 << 20
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]


@dataclass
class ControlPlane:
    store: Store
    blobs: BlobStore
    clock: Clock
    cluster: Cluster
    dispatcher: Dispatcher
    scheduler: Scheduler
    logs: LogHub
    chunks: ChunkStore
    images: ImageBuilds
    expiry: Expiry

    @classmethod
    async def open(cls, data_dir: Path, clock: Clock | None = None) -> ControlPlane:
        retention = RetentionPolicy(output_retention_s())  # a bad setting fails before anything
        data_dir.mkdir(parents=True, exist_ok=True)
        clock = clock or SystemClock()
        store = await Store.open(sqlite_url(data_dir / "ember.db"))
        cluster = Cluster()
        dispatcher = Dispatcher(store, clock, cluster.definition, cluster.count_containers)
        scheduler = Scheduler(store, clock, cluster, dispatcher)
        chunks = open_store(image_store_url(data_dir))
        blobs = LocalBlobStore(data_dir / "blobs")
        plane = cls(
            store,
            blobs,
            clock,
            cluster,
            dispatcher,
            scheduler,
            LogHub(store),
            chunks,
            ImageBuilds(store, cluster, chunks, clock),
            Expiry(store, blobs, clock, retention),
        )
        dispatcher.on_notice = plane.notice
        await plane.restore()
        return plane

    async def notice(self, function_id: str, text: str) -> None:
        """A line from ember itself in the app log of a function (its callers see it with the
        function's own output)."""
        info = self.cluster.functions.get(function_id)
        if info is not None:
            line = f"ember: {info.definition.name}: {text}\n"
            await self.logs.append(
                [LogLine(0, info.app_id, info.definition.name, "", 2, line, self.clock.now())]
            )

    async def load_function(self, function_id: str) -> FunctionInfo:
        info = self.cluster.functions.get(function_id)
        if info is None:
            function = await self.store.apps.function(function_id)
            info = FunctionInfo(function.function_id, function.app_id, function.definition)
            self.cluster.remember_function(info)
        return info

    async def restore(self) -> None:
        """Rebuild the live view from the store after a (re)start."""
        now = self.clock.now()
        live_apps = await self.store.apps.list(include_stopped=False)
        live_ids = [app.app_id for app in live_apps]
        # Clients could not heartbeat while we were down: their apps get a fresh window too.
        await self.store.apps.heartbeat(
            [app.app_id for app in live_apps if app.state == api_pb2.APP_STATE_EPHEMERAL], now
        )
        self.cluster.restore(
            live_ids,
            [
                FunctionInfo(f.function_id, f.app_id, f.definition)
                for f in await self.store.apps.functions_of(live_ids)
            ],
            # Workers get a fresh heartbeat window to reconnect after our restart.
            [
                LiveWorker(w.worker_id, w.hostname, w.cpu, w.memory_mb, now)
                for w in await self.store.cluster.workers()
            ],
            [
                LiveContainer(
                    c.container_id,
                    c.app_id,
                    c.function_id,
                    c.worker_id,
                    c.cpu,
                    c.memory_mb,
                    c.state,
                    c.created_at,
                )
                for c in await self.store.cluster.live_containers()
            ],
        )
        await self.dispatcher.restore()
        # Definitions of every function with containers or work, stopped apps' included.
        functions = {c.function_id for c in self.cluster.containers.values()}
        for function_id in functions | self.dispatcher.functions_with_work():
            await self.load_function(function_id)

    async def close(self) -> None:
        await self.store.close()
        self.chunks.close()


async def serve(data_dir: Path, address: str, ready: asyncio.Event | None = None) -> None:
    """Run the control plane on `address` (host:port) until cancelled."""
    plane = await ControlPlane.open(data_dir)
    server = grpc.aio.server(options=GRPC_OPTIONS)
    api_pb2_grpc.add_EmberServicer_to_server(EmberService(plane), server)
    api_pb2_grpc.add_WorkersServicer_to_server(WorkersService(plane), server)
    server.add_insecure_port(address)
    await server.start()
    log.info("control plane listening on %s", address)
    if ready is not None:
        ready.set()
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(plane.scheduler.run())
            group.create_task(plane.scheduler.run_reaper())
            group.create_task(plane.expiry.run())
            group.create_task(server.wait_for_termination())
    except Exception:
        # Logged here: the clean-up below may be cancelled, and then this error is lost.
        log.exception("the control plane stops: one of its loops failed")
        raise
    finally:
        # Waiting requests end first, as unreachable (their callers ask again, of the next
        # control plane); the grace lets their answers out.
        plane.dispatcher.stop_waiting()
        await server.stop(grace=1.0)
        await plane.close()
