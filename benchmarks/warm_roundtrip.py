"""Warm round trip: `.remote()` of a no-op whose container is already running.

The app runs; warm-up calls start the container and settle the paths; then `calls` sequential
`noop.remote()` are timed one by one with `time.perf_counter()` around each call (serialise the
arguments, FunctionCall, the container's exchange, the result back, deserialise).
"""

from __future__ import annotations

import time

from benchmarks.common import Figure, Outcome, deadline_loop, load_app, log, percentile, summary_ms

TARGET_P50_MS = 2.0
TARGET_P99_MS = 10.0


def run(
    calls: int, warmup: int, limit_s: float, ray: dict[str, float] | None, ray_note: str
) -> Outcome:
    outcome = Outcome("warm round trip")
    module = load_app("noop_app.py")
    app, noop = module.app, module.noop  # type: ignore[attr-defined]
    samples: list[float] = []
    with app.run():
        started = time.perf_counter()
        noop.remote()  # the first call starts the container
        outcome.details.append(
            f"first call (cold container): {time.perf_counter() - started:.3f} s"
        )
        for _ in range(warmup):
            noop.remote()
        for _ in deadline_loop(calls, limit_s):
            started = time.perf_counter()
            noop.remote()
            samples.append(time.perf_counter() - started)
    if len(samples) < calls:
        outcome.details.append(f"stopped at its time limit after {len(samples)} of {calls} calls")
    log(f"  ember warm round trip: {summary_ms(samples)}")
    outcome.details.append(f"ember round trips: {summary_ms(samples)}")
    outcome.figures = _figures(samples, ray, ray_note)
    return outcome


def _figures(samples: list[float], ray: dict[str, float] | None, ray_note: str) -> list[Figure]:
    p50 = percentile(samples, 50) * 1000
    p99 = percentile(samples, 99) * 1000
    ray_p50 = ray.get("rtt_p50_ms") if ray else None
    ray_p99 = ray.get("rtt_p99_ms") if ray else None
    return [
        Figure(
            "warm round trip p50",
            p50,
            "ms",
            baseline=ray_p50,
            baseline_name="Ray" if ray_p50 else ray_note,
            target=f"<= {TARGET_P50_MS:g} ms",
            met=p50 <= TARGET_P50_MS,
        ),
        Figure(
            "warm round trip p99",
            p99,
            "ms",
            baseline=ray_p99,
            baseline_name="Ray" if ray_p99 else ray_note,
            target=f"<= {TARGET_P99_MS:g} ms",
            met=p99 <= TARGET_P99_MS,
        ),
    ]
