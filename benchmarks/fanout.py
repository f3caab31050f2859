"""Fan-out: `inputs` no-op inputs through `.map`, on two containers that are already warm.

The function has min_containers = max_containers = 2 (the same two cores Ray gets). One block:
the app runs; before the clock starts, probe inputs that sleep and name their container are
mapped until one round comes back from two different containers, so both serve; then a small
untimed map warms the paths; then the timed map, all results checked; the app stops. A block's
figure is inputs / (time from calling `.map` to holding the last result); `benchmarks.versus_ray`
takes such blocks in turn with Ray's.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import BenchTimeout, Figure, load_app

TARGET_PER_S = 2500.0
PROBE_HOLD_S = 0.5
PROBE_ROUNDS = 60  # each round takes at least PROBE_HOLD_S


def block(inputs: int, warmup: int, limit_s: float) -> dict[str, Any]:
    """One block: `inputs`, `seconds` (the timed map) and `serving_s` (until both served)."""
    module = load_app("fanout_app.py")
    app, fan, containers = module.app, module.fan, module.CONTAINERS  # type: ignore[attr-defined]
    with app.run():
        started = time.perf_counter()
        _wait_until_all_serve(fan, containers)
        serving_s = time.perf_counter() - started
        if warmup:
            assert list(fan.map(range(warmup))) == list(range(warmup))
        give_up = time.monotonic() + limit_s
        got = 0
        total = 0
        started = time.perf_counter()
        for value in fan.map(range(inputs)):
            total += value
            got += 1
            if time.monotonic() > give_up:
                break  # leaving the loop cancels what has not run
        elapsed = time.perf_counter() - started
    if got < inputs:
        raise BenchTimeout(f"fan-out got {got} of {inputs} results in {limit_s:g} s")
    if total != inputs * (inputs - 1) // 2:
        raise AssertionError(f"fan-out results are wrong: their sum is {total}")
    return {"inputs": inputs, "seconds": elapsed, "serving_s": serving_s}


def figure(rate: float, ray_rate: float | None, ray_note: str, name: str) -> Figure:
    return Figure(
        name,
        rate,
        "/s",
        baseline=ray_rate,
        baseline_name="Ray" if ray_rate else ray_note,
        target=f">= {TARGET_PER_S:g} /s",
        met=rate >= TARGET_PER_S,
    )


def _wait_until_all_serve(fan: object, containers: int) -> None:
    for _ in range(PROBE_ROUNDS):
        hosts = set(fan.map(range(containers), kwargs={"hold": PROBE_HOLD_S}))  # type: ignore[attr-defined]
        if len(hosts) == containers:
            return
    raise BenchTimeout(f"the fan-out function never had {containers} containers serving at once")
