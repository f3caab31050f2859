"""The control plane's live view of its workers, their containers and the functions they run.

The store holds the same facts durably; this view answers the scheduler's questions without a
query and holds each worker's queue of orders. It is the one owner of that state: everyone reads
it through read-only views, and changes it only through the methods below, each of which keeps
the view whole (a worker that registers again keeps its queue of orders; a worker given up loses
the orders it was never sent). The scheduler makes the changes that come with decisions (start,
stop, exit, liveness), the API those that come with requests (an app created, a worker
registered), each alongside its write to the store; `restore` rebuilds it all after a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Set
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
        self._workers: dict[str, LiveWorker] = {}
        self._containers: dict[str, LiveContainer] = {}
        self._functions: dict[str, FunctionInfo] = {}
        self._live_apps: set[str] = set()
        # Each worker's orders, by id. Kept apart from `workers`: a worker given up for silence
        # may come back with its order stream still open, reading this same queue.
        self._orders: dict[str, asyncio.Queue[api_pb2.WorkerOrder]] = {}

    # ---- reading

    @property
    def workers(self) -> Mapping[str, LiveWorker]:
        return self._workers

    @property
    def containers(self) -> Mapping[str, LiveContainer]:
        return self._containers

    @property
    def functions(self) -> Mapping[str, FunctionInfo]:
        return self._functions

    @property
    def live_apps(self) -> Set[str]:
        return self._live_apps

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

    def images_in_use(self) -> set[str]:
        """The images of the live apps' functions."""
        return {
            info.definition.image_id
            for info in self._functions.values()
            if info.app_id in self._live_apps
        }

    def orders(self, worker_id: str) -> asyncio.Queue[api_pb2.WorkerOrder]:
        """The queue a worker's order stream reads."""
        return self._orders.setdefault(worker_id, asyncio.Queue())

    # ---- changing

    def restore(
        self,
        live_apps: Iterable[str],
        functions: Iterable[FunctionInfo],
        workers: Iterable[LiveWorker],
        containers: Iterable[LiveContainer],
    ) -> None:
        """The view as the store has it, after a (re)start."""
        self._live_apps = set(live_apps)
        self._functions = {info.function_id: info for info in functions}
        self._workers = {worker.worker_id: worker for worker in workers}
        self._containers = {c.container_id: c for c in containers}

    def register_worker(
        self, worker_id: str, hostname: str, cpu: float, memory_mb: int, now: float
    ) -> None:
        """A worker registered, or registered again (it keeps its queue of orders)."""
        self._workers[worker_id] = LiveWorker(worker_id, hostname, cpu, memory_mb, now)

    def worker_heard(self, worker_id: str, now: float) -> bool:
        """A worker's heartbeat; False for a worker not (or no longer) registered."""
        worker = self._workers.get(worker_id)
        if worker is None:
            return False
        worker.last_heartbeat_at = now
        return True

    def forget_worker(self, worker_id: str) -> None:
        """A worker given up: its orders not yet delivered were for containers now lost."""
        self._workers.pop(worker_id, None)
        queue = self.orders(worker_id)
        while not queue.empty():
            queue.get_nowait()

    def add_container(self, container: LiveContainer) -> None:
        self._containers[container.container_id] = container

    def set_container_state(self, container_id: str, state: str) -> None:
        self._containers[container_id].state = state

    def remove_container(self, container_id: str) -> LiveContainer | None:
        return self._containers.pop(container_id, None)

    def remember_function(self, info: FunctionInfo) -> None:
        self._functions[info.function_id] = info

    def app_live(self, app_id: str) -> None:
        self._live_apps.add(app_id)

    def apps_stopped(self, app_ids: Iterable[str]) -> None:
        self._live_apps.difference_update(app_ids)

    def order(self, worker_id: str, order: api_pb2.WorkerOrder) -> None:
        """Send a registered worker an order (through its queue)."""
        if worker_id in self._workers:
            self.orders(worker_id).put_nowait(order)
