"""Where a new container goes: best fit over the workers' free CPU and memory.

A pure function over plain data. Each worker that cannot hold the request is rejected with a
reason a user can read; among those that can, the fullest wins, so that lightly used hosts drain
and can be given back.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class WorkerCapacity:
    worker_id: str
    free_cpu: float
    free_memory_mb: int
    total_cpu: float
    total_memory_mb: int


@dataclass(frozen=True)
class Request:
    cpu: float
    memory_mb: int


@dataclass(frozen=True)
class Placement:
    worker_id: str | None
    rejections: Counter[str] = field(default_factory=Counter)

    def never_fits(self, workers: int) -> bool:
        """No worker could hold the request even when empty."""
        return self.rejections[TOO_SMALL] == workers

    def explain(self, workers: int) -> str:
        """'0 of 2 workers fit: 2 short of memory', or 'no worker connected'."""
        if workers == 0:
            return NO_WORKER
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.rejections.items())
        return f"0 of {workers} workers fit" + (f": {reasons}" if reasons else "")


TOO_SMALL = "too small for the request"
NO_WORKER = "no worker connected"


def rejection(request: Request, worker: WorkerCapacity) -> str | None:
    if request.cpu > worker.total_cpu or request.memory_mb > worker.total_memory_mb:
        return TOO_SMALL
    if request.cpu > worker.free_cpu + 1e-9:
        return "short of CPU"
    if request.memory_mb > worker.free_memory_mb:
        return "short of memory"
    return None


def place(request: Request, workers: list[WorkerCapacity]) -> Placement:
    rejections: Counter[str] = Counter()
    fitting = []
    for worker in workers:
        reason = rejection(request, worker)
        if reason is None:
            fitting.append(worker)
        else:
            rejections[reason] += 1
    if not fitting:
        return Placement(None, rejections)
    best = min(
        fitting,
        key=lambda w: (
            (w.free_cpu - request.cpu) / max(w.total_cpu, 1e-9)
            + (w.free_memory_mb - request.memory_mb) / max(w.total_memory_mb, 1)
        ),
    )
    return Placement(best.worker_id, rejections)
