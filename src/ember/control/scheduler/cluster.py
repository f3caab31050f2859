"""The control plane's live view of its workers, their containers and the functions they run.

The store holds the same facts durably; this view answers the scheduler's questions without a
query and holds each worker's queue of orders. `ControlPlane.restore` rebuilds it after a restart.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ember.control.scheduler.placement import WorkerCapacity
from ember.proto import api_pb2


@dataclass
class LiveWorker:
    worker_id: str
    hostname: str
    cpu: float
    memory_mb: int
    last_heartbeat_at: float


@dataclass
class LiveContainer:
    container_id: str
    app_id: str
    function_id: str
    worker_id: str
    cpu: float
    memory_mb: int
    state: str
    created_at: float


@dataclass(frozen=True)
class FunctionInfo:
    function_id: str
    app_id: str
    definition: api_pb2.FunctionDefinition


class Cluster:
    def __init__(self) -> None:
        self.workers: dict[str, LiveWorker] = {}
        self.containers: dict[str, LiveContainer] = {}
        self.functions: dict[str, FunctionInfo] = {}
        self.live_apps: set[str] = set()
        # Each worker's orders, by id. Kept apart from `workers`: a worker given up for silence
        # may come back with its order stream still open, reading this same queue.
        self._orders: dict[str, asyncio.Queue[api_pb2.WorkerOrder]] = {}

    def definition(self, function_id: str) -> api_pb2.FunctionDefinition:
        return self.functions[function_id].definition

    def containers_of(self, function_id: str) -> list[LiveContainer]:
        return [c for c in self.containers.values() if c.function_id == function_id]

    def count_containers(self, function_id: str) -> int:
        return sum(1 for c in self.containers.values() if c.function_id == function_id)

    def containers_on(self, worker_id: str) -> list[LiveContainer]:
        return [c for c in self.containers.values() if c.worker_id == worker_id]

    def capacities(self) -> list[WorkerCapacity]:
        capacities = []
        for worker in self.workers.values():
            placed = self.containers_on(worker.worker_id)
            capacities.append(
                WorkerCapacity(
                    worker_id=worker.worker_id,
                    free_cpu=worker.cpu - sum(c.cpu for c in placed),
                    free_memory_mb=worker.memory_mb - sum(c.memory_mb for c in placed),
                    total_cpu=worker.cpu,
                    total_memory_mb=worker.memory_mb,
                )
            )
        return capacities

    def orders(self, worker_id: str) -> asyncio.Queue[api_pb2.WorkerOrder]:
        """The queue a worker's order stream reads."""
        return self._orders.setdefault(worker_id, asyncio.Queue())

    def order(self, worker_id: str, order: api_pb2.WorkerOrder) -> None:
        if worker_id in self.workers:
            self.orders(worker_id).put_nowait(order)

    def forget_worker(self, worker_id: str) -> None:
        """A worker given up: its orders not yet delivered were for containers now lost."""
        self.workers.pop(worker_id, None)
        queue = self.orders(worker_id)
        while not queue.empty():
            queue.get_nowait()
