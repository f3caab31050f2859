"""The scheduler: turns the autoscaler's decisions into containers placed on workers.

Each tick, for every function with work or containers, it asks the pure policy
(`ember.control.autoscaler.policy.decide`) how many containers to start or stop, places new ones
with `placement.place`, records them in the store and sends the orders to the workers. The first
input of an idle function pokes it, so a cold start waits for no tick. It also watches liveness:
workers that stop heartbeating, and ephemeral apps whose client went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from ember.control.autoscaler.policy import ContainerLoad, ScalingInput, decide
from ember.control.clock import Clock
from ember.control.ids import new_id
from ember.control.queue.dispatcher import Dispatcher
from ember.control.scheduler.cluster import Cluster, FunctionInfo, LiveContainer
from ember.control.scheduler.placement import (
    NO_WORKER,
    Placement,
    Request,
    WorkerCapacity,
    place,
)
from ember.control.store import Container, Store, schema
from ember.proto import api_pb2

log = logging.getLogger(__name__)

TICK_S = 0.25
WORKER_TIMEOUT_S = 15.0  # a worker silent this long is presumed gone, with its containers
APP_HEARTBEAT_TIMEOUT_S = 30.0  # an ephemeral app whose client is silent this long stops
CONTAINER_REPORT_GRACE_S = 10.0  # a new container may be missing from heartbeats this long


class Scheduler:
    def __init__(
        self, store: Store, clock: Clock, cluster: Cluster, dispatcher: Dispatcher
    ) -> None:
        self._store = store
        self._clock = clock
        self._cluster = cluster
        self._dispatcher = dispatcher
        self._poked = asyncio.Event()
        self._unplaceable: dict[str, str] = {}  # function -> last explanation logged
        dispatcher.on_work = self.poke

    def poke(self, function_id: str = "") -> None:
        self._poked.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), TICK_S)
            self._poked.clear()
            await self.tick()

    async def tick(self) -> None:
        self._dispatcher.promote_delayed()
        functions = self._dispatcher.functions_with_work()
        functions.update(c.function_id for c in self._cluster.containers.values())
        functions.update(
            f.function_id
            for f in self._cluster.functions.values()
            if f.definition.autoscaling.min_containers > 0 and f.app_id in self._cluster.live_apps
        )
        for function_id in functions:
            info = self._cluster.functions.get(function_id)
            if info is None or info.app_id not in self._cluster.live_apps:
                continue
            await self._scale(info)

    async def _scale(self, info: FunctionInfo) -> None:
        definition = info.definition
        now = self._clock.now()
        containers = tuple(
            ContainerLoad(
                c.container_id,
                None if c.state == schema.STARTING else self._dispatcher.idle_since(c.container_id),
            )
            for c in self._cluster.containers_of(info.function_id)
            if c.state != schema.STOPPING
        )
        decision = decide(
            ScalingInput(
                now=now,
                queued=self._dispatcher.queued(info.function_id),
                running=self._dispatcher.running(info.function_id),
                containers=containers,
                min_containers=definition.autoscaling.min_containers,
                max_containers=definition.autoscaling.max_containers,
                scaledown_window_s=definition.autoscaling.scaledown_window_s,
            )
        )
        request = Request(
            cpu=definition.resources.cpu, memory_mb=int(definition.resources.memory_mb)
        )
        for started in range(decision.start):
            capacities = self._cluster.capacities()
            placement = place(request, capacities)
            if placement.worker_id is not None:
                await self._start(info, request, placement.worker_id)
                continue
            if capacities and placement.never_fits(len(capacities)):
                await self._fail_unplaceable(info, request, capacities)
            else:
                self._log_waiting(info, placement)
                await self._evict_idle(info.function_id, decision.start - started)
            break
        for container_id in decision.stop:
            await self.stop_container(container_id, "idle past its scaledown window")

    async def _fail_unplaceable(
        self, info: FunctionInfo, request: Request, capacities: list[WorkerCapacity]
    ) -> None:
        """No worker could ever hold the function: fail what waits for it, with the reason."""
        largest = max(capacities, key=lambda w: (w.total_memory_mb, w.total_cpu))
        await self._dispatcher.fail_queued(
            info.function_id,
            api_pb2.Result(
                status=api_pb2.RESULT_STATUS_INIT_FAILURE,
                exception_text=(
                    f"function {info.definition.name!r} asks for {request.cpu:g} CPU and "
                    f"{request.memory_mb} MiB, more than any worker has (the largest has "
                    f"{largest.total_cpu:g} CPU and {largest.total_memory_mb} MiB)"
                ),
            ),
        )

    def _log_waiting(self, info: FunctionInfo, placement: Placement) -> None:
        explanation = placement.explain(len(self._cluster.workers))
        if self._unplaceable.get(info.function_id) != explanation:
            log.info("cannot place %s yet: %s", info.definition.name, explanation)
            self._unplaceable[info.function_id] = explanation

    async def _start(self, info: FunctionInfo, request: Request, worker_id: str) -> None:
        self._unplaceable.pop(info.function_id, None)
        app = await self._store.apps.get(info.app_id)
        container = LiveContainer(
            container_id=new_id("ta"),
            app_id=info.app_id,
            function_id=info.function_id,
            worker_id=worker_id,
            cpu=request.cpu,
            memory_mb=request.memory_mb,
            state=schema.STARTING,
            created_at=self._clock.now(),
        )
        self._cluster.add_container(container)
        await self._store.cluster.add_container(
            Container(
                container.container_id,
                container.app_id,
                container.function_id,
                container.worker_id,
                container.state,
                container.cpu,
                container.memory_mb,
                container.created_at,
            )
        )
        self._cluster.order(
            worker_id,
            api_pb2.WorkerOrder(
                start=api_pb2.ContainerSpec(
                    container_id=container.container_id,
                    app_id=info.app_id,
                    function_id=info.function_id,
                    function=info.definition,
                    source_blob_id=app.source_blob_id,
                )
            ),
        )

    async def _evict_idle(self, function_id: str, count: int) -> None:
        """Make room for a function that cannot be placed: stop up to `count` idle containers of
        other functions (longest idle first), never going below their `min_containers`. Room
        already being freed (containers stopping) counts against `count`."""
        count -= sum(1 for c in self._cluster.containers.values() if c.state == schema.STOPPING)
        if count <= 0:
            return
        now = self._clock.now()
        spare: list[tuple[float, str]] = []
        for other in {c.function_id for c in self._cluster.containers.values()} - {function_id}:
            containers = [
                c for c in self._cluster.containers_of(other) if c.state == schema.RUNNING
            ]
            keep = self._cluster.definition(other).autoscaling.min_containers
            idle = [
                (since, c.container_id)
                for c in containers
                if (since := self._dispatcher.idle_since(c.container_id)) is not None
            ]
            spare.extend(sorted(idle)[: max(0, len(containers) - keep)])
        for since, container_id in sorted(spare)[:count]:
            await self.stop_container(
                container_id,
                f"idle for {now - since:.0f} s; its room is needed by another function",
            )

    async def stop_container(self, container_id: str, reason: str) -> None:
        container = self._cluster.containers.get(container_id)
        if container is None or container.state == schema.STOPPING:
            return
        log.info("stopping container %s: %s", container_id, reason)
        self._cluster.set_container_state(container_id, schema.STOPPING)
        await self._store.cluster.set_container_state(
            [container_id], schema.STOPPING, self._clock.now()
        )
        self._cluster.order(
            container.worker_id, api_pb2.WorkerOrder(stop_container_id=container_id)
        )

    async def container_exited(
        self,
        container_id: str,
        reason: int,
        message: str,
        inflight: Sequence[str],
    ) -> None:
        container = self._cluster.remove_container(container_id)
        await self._store.cluster.set_container_state(
            [container_id], schema.STOPPED, self._clock.now(), message
        )
        await self._dispatcher.container_exited(container_id, reason, message, inflight)
        if container is not None and reason == api_pb2.RESULT_STATUS_INIT_FAILURE:
            # The function cannot start: fail what waits for it instead of retrying forever.
            await self._dispatcher.fail_queued(
                container.function_id, api_pb2.Result(status=reason, exception_text=message)
            )
        self.poke()

    async def stop_apps(self, app_ids: Sequence[str]) -> None:
        stopped = await self._store.apps.stop(app_ids, self._clock.now())
        self._cluster.apps_stopped(app_ids)
        functions = [f.function_id for f in self._cluster.functions.values() if f.app_id in app_ids]
        if functions:
            await self._store.calls.cancel_function_inputs(functions)
            for function_id in functions:
                await self._dispatcher.fail_queued(
                    function_id,
                    api_pb2.Result(
                        status=api_pb2.RESULT_STATUS_CANCELLED,
                        exception_text="the app stopped before this input ran",
                    ),
                )
        for container in list(self._cluster.containers.values()):
            if container.app_id in app_ids:
                await self.stop_container(container.container_id, "its app stopped")
        if stopped:
            log.info("stopped apps %s", ", ".join(stopped))

    async def worker_heartbeat(self, worker_id: str, alive: Sequence[str]) -> None:
        """Renew the leases of a worker's containers and reconcile the two views of them."""
        now = self._clock.now()
        if not self._cluster.worker_heard(worker_id, now):
            return
        await self._store.cluster.heartbeat_worker(worker_id, now)
        await self._dispatcher.renew_leases(alive)
        reported = set(alive)
        for container in self._cluster.containers_on(worker_id):
            if (
                container.container_id not in reported
                and now - container.created_at > CONTAINER_REPORT_GRACE_S
            ):
                # Its worker no longer has it: the worker started again, and removed what its
                # earlier life left.
                await self.container_exited(
                    container.container_id,
                    api_pb2.RESULT_STATUS_HOST_LOST,
                    "the container disappeared from its host (its worker started again)",
                    self._dispatcher.holds(container.container_id),
                )
        for container_id in reported - set(self._cluster.containers):
            self._cluster.order(worker_id, api_pb2.WorkerOrder(stop_container_id=container_id))

    async def register_worker(
        self, worker_id: str, hostname: str, cpu: float, memory_mb: int, *, started: bool
    ) -> None:
        """A worker registered: new, reconnecting (its orders kept), or `started` again under
        its old id (see `worker_started`)."""
        now = self._clock.now()
        await self._store.cluster.register_worker(worker_id, hostname, cpu, memory_mb, now)
        self._cluster.register_worker(worker_id, hostname, cpu, memory_mb, now)
        if started:
            await self.worker_started(worker_id)
        self.poke()

    async def container_running(self, container_id: str) -> None:
        """A starting container asked for its first input: it is up."""
        container = self._cluster.containers.get(container_id)
        if container is None or container.state != schema.STARTING:
            return
        self._cluster.set_container_state(container_id, schema.RUNNING)
        await self._store.cluster.set_container_state(
            [container_id], schema.RUNNING, self._clock.now()
        )

    async def worker_started(self, worker_id: str) -> None:
        """A worker process started again under its old id: it removed the containers of its
        earlier life, whose inputs were lost with their host (no heartbeat need miss them)."""
        await self._lose_containers_of(
            worker_id, "the container's worker stopped and started again"
        )

    async def _lose_containers_of(self, worker_id: str, reason: str) -> None:
        """The worker's containers are gone with their host: their inputs run again."""
        for container in self._cluster.containers_on(worker_id):
            await self.container_exited(
                container.container_id,
                api_pb2.RESULT_STATUS_HOST_LOST,
                reason,
                self._dispatcher.holds(container.container_id),
            )

    def waiting_reason(self, function_id: str) -> str:
        """Why a function's queued inputs are waiting for a container, in words for its callers;
        empty when they are not (they run, or a container is on its way)."""
        if not self._dispatcher.queued(function_id):
            return ""
        if not self._cluster.workers:
            return NO_WORKER
        return self._unplaceable.get(function_id, "")

    async def reap(self) -> None:
        """Stop what lost its heartbeat: workers and their containers, ephemeral apps."""
        now = self._clock.now()
        for worker in list(self._cluster.workers.values()):
            if now - worker.last_heartbeat_at > WORKER_TIMEOUT_S:
                log.warning(
                    "worker %s stopped heartbeating; its containers are lost", worker.worker_id
                )
                self._cluster.forget_worker(worker.worker_id)
                await self._lose_containers_of(
                    worker.worker_id, "the container's host stopped answering"
                )
        silent = await self._store.apps.ephemeral_silent_since(now - APP_HEARTBEAT_TIMEOUT_S)
        if silent:
            await self.stop_apps(silent)
        await self._dispatcher.expire_leases()

    async def run_reaper(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.reap()
