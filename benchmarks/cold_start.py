"""Cold start: `.remote()` on a function that has no container, to its code running and to the
result back; and the floor, `runc run` of `python3 -c pass` on the same root file system.

Every sample is cold the way a user meets it, through the real path: input queued, scheduler
poked, container placed, the worker's start order, overlay mount and `runc run`, the harness
connecting and importing the app's module, the input leased, the result back through the control
plane. Two ways to be at zero containers are measured:

- scaled to zero (the headline): one app stays up; its function has the shortest scaledown window
  (1 s); before each sample the benchmark waits until the cluster has no container at all, so the
  function scaled back to zero as an idle function does.
- new app: each sample runs the app afresh (`with app.run():` per sample: a new app and function
  id); the app's set-up (source upload, AppCreate, AppPublish) is not timed, only `.remote()`.

In both, the worker has a standby container of the function's image and limits (it starts one
after each container's first input, `worker/standby.py`), so a sample links in the source and
loads the function in an interpreter already running. A third mode measures the same as
"scaled to zero" on a worker started again with `EMBER_STANDBY_CONTAINERS=0`: every cold start
runs runc and starts the interpreter, as on a host with no standby of that shape.

The function returns `time.time()` read on its first line; the caller reads `time.time()` just
before `.remote()`, so "to user code" is the difference (one host, one clock) and "to result" is
the caller's wall time for the whole call.

The floor uses ember's own `RuncRuntime` exactly as the worker does (overlay over the base image,
`runc run`), timed from `start()` until `wait()` returns, in a state directory of its own.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path

from benchmarks.common import (
    APPS_DIR,
    Figure,
    Outcome,
    cluster_stub,
    deadline_loop,
    load_app,
    log,
    percentile,
    summary_ms,
    wait_for_containers,
)

TARGET_P50_MS = 250.0
FLOOR_ARGS = ["python3", "-c", "pass"]
# What the harness imports before user code runs, in a container mounted the way the worker
# mounts it: a second reference that tells runc's share of a cold start from Python's.
IMPORTS_ARGS = ["python3", "-c", "import ember.harness.runtime, cloudpickle, cold_app"]
ZERO_TIMEOUT_S = 60.0  # how long to wait for the previous sample's container to go


def run(samples: int, limit_s: float, state_dir: Path, new_app: bool) -> Outcome:
    outcome = Outcome("cold start")
    floor = _floor(samples, state_dir, FLOOR_ARGS, ())
    log(f"  runc floor (python3 -c pass): {summary_ms(floor)}")
    outcome.details.append(f"runc run floor, `python3 -c pass`: {summary_ms(floor)}")
    imports = _floor(samples, state_dir, IMPORTS_ARGS, _harness_mounts(state_dir))
    log(f"  runc run + the harness's imports: {summary_ms(imports)}")
    outcome.details.append(
        f"runc run of the harness's imports (ember, cloudpickle, the app module) with the "
        f"worker's mounts: {summary_ms(imports)}"
    )
    floor_p50 = percentile(floor, 50) * 1000
    floor_p99 = percentile(floor, 99) * 1000

    module = load_app("cold_app.py")
    stub = cluster_stub()
    budget = limit_s / (3 if new_app else 2)
    to_user, to_result = _scaled_to_zero(module, stub, samples, budget)
    _report(outcome, "scaled to zero", to_user, to_result, samples, floor_p50, floor_p99, True)
    if new_app:
        to_user, to_result = _new_app(module, stub, samples, budget)
        _report(outcome, "new app", to_user, to_result, samples, floor_p50, floor_p99, False)
    to_user, to_result = _without_standbys(module, stub, samples, budget)
    mode = "scaled to zero, no standby"
    _report(outcome, mode, to_user, to_result, samples, floor_p50, floor_p99, False)
    return outcome


def _report(
    outcome: Outcome,
    mode: str,
    to_user: list[float],
    to_result: list[float],
    samples: int,
    floor_p50: float,
    floor_p99: float,
    headline: bool,
) -> None:
    if len(to_result) < samples:
        outcome.details.append(f"{mode}: stopped at its time limit after {len(to_result)} samples")
    log(f"  ember cold start ({mode}) to user code: {summary_ms(to_user)}")
    log(f"  ember cold start ({mode}) to result:    {summary_ms(to_result)}")
    outcome.details.append(f"{mode}, to user code: {summary_ms(to_user)}")
    outcome.details.append(f"{mode}, to result: {summary_ms(to_result)}")
    each = ", ".join(f"{s * 1000:.0f}" for s in to_result)
    outcome.details.append(f"{mode}, each sample to result, in order (ms): {each}")
    log(f"  each sample to result, in order (ms): {each}")
    for label, values in (("to user code", to_user), ("to result", to_result)):
        for q, floor in ((50, floor_p50), (99, floor_p99)):
            value = percentile(values, q) * 1000
            target = label == "to result" and q == 50 and headline
            outcome.figures.append(
                Figure(
                    f"cold start ({mode}) {label} p{q}",
                    value,
                    "ms",
                    baseline=floor,
                    baseline_name="runc floor",
                    target=f"<= {TARGET_P50_MS:g} ms" if target else "",
                    met=value <= TARGET_P50_MS if target else None,
                )
            )


def _scaled_to_zero(
    module: object, stub: object, samples: int, limit_s: float
) -> tuple[list[float], list[float]]:
    app, first_line = module.app, module.first_line  # type: ignore[attr-defined]
    to_user: list[float] = []
    to_result: list[float] = []
    with app.run():
        for _ in deadline_loop(samples, limit_s):
            wait_for_containers(stub, 0, ZERO_TIMEOUT_S)
            started = time.time()
            ran_at = first_line.remote()
            to_result.append(time.time() - started)
            to_user.append(ran_at - started)
    return to_user, to_result


def _new_app(
    module: object, stub: object, samples: int, limit_s: float
) -> tuple[list[float], list[float]]:
    app, first_line = module.app, module.first_line  # type: ignore[attr-defined]
    to_user: list[float] = []
    to_result: list[float] = []
    for _ in deadline_loop(samples, limit_s):
        wait_for_containers(stub, 0, ZERO_TIMEOUT_S)
        with app.run():
            started = time.time()
            ran_at = first_line.remote()
            to_result.append(time.time() - started)
            to_user.append(ran_at - started)
    return to_user, to_result


def _without_standbys(
    module: object, stub: object, samples: int, limit_s: float
) -> tuple[list[float], list[float]]:
    """`_scaled_to_zero` on the worker started again with its standbys off (and started again
    as it was afterwards); one untimed call first, while the new worker registers."""
    from ember.client import local_cluster

    app, first_line = module.app, module.first_line  # type: ignore[attr-defined]
    wait_for_containers(stub, 0, ZERO_TIMEOUT_S)
    os.environ["EMBER_STANDBY_CONTAINERS"] = "0"
    try:
        local_cluster.restart_worker()
        with app.run():
            first_line.remote()
        return _scaled_to_zero(module, stub, samples, limit_s)
    finally:
        del os.environ["EMBER_STANDBY_CONTAINERS"]
        wait_for_containers(stub, 0, ZERO_TIMEOUT_S)
        local_cluster.restart_worker()


def _harness_mounts(state_dir: Path) -> tuple[object, ...]:
    """The mounts a worker gives a container: the app's source and the compiled ember package."""
    from ember.container import BindMount
    from ember.worker.package import compiled_package

    return (
        BindMount(APPS_DIR, "/app", readonly=True),
        BindMount(compiled_package(state_dir / "package"), "/opt/ember/ember", readonly=True),
    )


def _floor(
    samples: int, state_dir: Path, args: list[str], mounts: tuple[object, ...]
) -> list[float]:
    return asyncio.run(_floor_async(samples, state_dir, args, mounts))


async def _floor_async(
    samples: int, state_dir: Path, args: list[str], mounts: tuple[object, ...]
) -> list[float]:
    from ember.builder import ensure_base_image
    from ember.container import ContainerConfig, RuncRuntime

    image_root = ensure_base_image()
    runtime = RuncRuntime(state_dir)
    prefix = f"bench-floor-{secrets.token_hex(4)}"
    times: list[float] = []
    # One untimed run first, so the page cache holds what python3 reads, as it does for ember.
    for i in range(samples + 1):
        config = ContainerConfig(
            container_id=f"{prefix}-{i}",
            image_root=image_root,
            args=args,
            env={
                "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "PYTHONPATH": "/app:/opt/ember",
                "LANG": "C.UTF-8",
            },
            hostname="floor",
            mounts=mounts,  # type: ignore[arg-type]
            cpu=0,
            memory_mb=0,
        )
        started = time.perf_counter()
        try:
            await runtime.start(config)
            status = await asyncio.wait_for(runtime.wait(config.container_id), 60)
            elapsed = time.perf_counter() - started
            if status.exit_code != 0:
                said = runtime.log_paths(config.container_id)[1].read_text(errors="replace")
                raise RuntimeError(f"the floor container {args} failed ({status}): {said[-2000:]}")
        finally:
            await runtime.remove(config.container_id)
        if i:
            times.append(elapsed)
    return times
