"""The `Ember` service's cluster status: each worker, what it has and what it holds."""

from __future__ import annotations

from ember.control.api.errors import translate_errors
from ember.control.api.service import Context, PlaneService
from ember.proto import api_pb2


class ClusterApi(PlaneService):
    @translate_errors
    async def ClusterStatus(
        self, request: api_pb2.ClusterStatusRequest, context: Context
    ) -> api_pb2.ClusterStatusResponse:
        cluster = self._plane.cluster
        summaries = []
        for worker in cluster.workers.values():
            placed = cluster.containers_on(worker.worker_id)
            summaries.append(
                api_pb2.WorkerSummary(
                    worker_id=worker.worker_id,
                    hostname=worker.hostname,
                    capacity=api_pb2.Resources(cpu=worker.cpu, memory_mb=worker.memory_mb),
                    used=api_pb2.Resources(
                        cpu=sum(c.cpu for c in placed), memory_mb=sum(c.memory_mb for c in placed)
                    ),
                    containers=len(placed),
                    last_heartbeat=worker.last_heartbeat_at,
                )
            )
        return api_pb2.ClusterStatusResponse(workers=summaries)
