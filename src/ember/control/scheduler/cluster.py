"""The control plane's live view of its workers, their containers and the functions they run.

The store holds the same facts durably; this view answers the scheduler's questions without a
query and holds each worker's queue of orders. `ControlPlane.restore` rebuilds it after a restart.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ember.control.scheduler.placement import WorkerCapacity
from ember.proto import api_pb2


@dataclass
class LiveWorker:
    worker_id: str
    hostname: str
    cpu: float
    memory_mb: int
    last_heartbeat_at: float
    orders: asyncio.Queue[api_pb2.WorkerOrder] = field(default_factory=asyncio.Queue)


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

    def order(self, worker_id: str, order: api_pb2.WorkerOrder) -> None:
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.orders.put_nowait(order)
