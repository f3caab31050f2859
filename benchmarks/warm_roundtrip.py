"""Warm round trip: `.remote()` of a no-op whose container is already running.

One block: the app runs; warm-up calls start the container and settle the paths; then `calls`
sequential `noop.remote()` are timed one by one with `time.perf_counter()` around each call
(serialise the arguments, FunctionCall, the container's exchange, the result back, deserialise);
the app stops. `benchmarks.versus_ray` takes such blocks in turn with Ray's and makes the figures
of all of them together.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import Figure, deadline_loop, load_app, percentile

TARGET_P50_MS = 2.0
TARGET_P99_MS = 10.0


def block(calls: int, warmup: int, limit_s: float) -> dict[str, Any]:
    """One block: `samples` (seconds each) and `first_call_s` (the call that starts the
    container)."""
    module = load_app("noop_app.py")
    app, noop = module.app, module.noop  # type: ignore[attr-defined]
    samples: list[float] = []
    with app.run():
        started = time.perf_counter()
        noop.remote()  # the first call starts the container
        first_call_s = time.perf_counter() - started
        for _ in range(warmup):
            noop.remote()
        for _ in deadline_loop(calls, limit_s):
            started = time.perf_counter()
            noop.remote()
            samples.append(time.perf_counter() - started)
    return {"samples": samples, "first_call_s": first_call_s}


def figures(
    samples: list[float], ray_samples: list[float], ray_note: str, name: str = "warm round trip"
) -> list[Figure]:
    out = []
    for q, target in ((50, TARGET_P50_MS), (99, TARGET_P99_MS)):
        value = percentile(samples, q) * 1000
        ray = percentile(ray_samples, q) * 1000 if ray_samples else None
        out.append(
            Figure(
                f"{name} p{q}",
                value,
                "ms",
                baseline=ray,
                baseline_name="Ray" if ray is not None else ray_note,
                target=f"<= {target:g} ms",
                met=value <= target,
            )
        )
    return out
