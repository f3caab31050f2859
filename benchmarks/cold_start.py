"""Cold start: `.remote()` on a function that has no container, to its code running and to the
result back, with the worker's standby containers on and off; the floor, `runc run` of `python3
-c pass` on the same root file system, taken in turn with ember's samples; and what the
containers' isolation costs at start (benchmarks/isolation_steps.py).

Every sample is cold the way a user meets it, through the real path: input queued, scheduler
poked, container placed, the worker's start order, the container's start, the harness connecting
and importing the app's module, the input leased, the result back through the control plane.
Two ways to be at zero containers are measured:

- scaled to zero (the headline): one app stays up; its function has the shortest scaledown window
  (1 s); before each sample the benchmark waits until the cluster has no container at all, so the
  function scaled back to zero as an idle function does.
- new app: each sample runs the app afresh (`with app.run():` per sample: a new app and function
  id); the app's set-up (source upload, AppCreate, AppPublish) is not timed, only `.remote()`.

Each is measured twice, and each row says which:

- standby: the worker keeps standby containers (`EMBER_STANDBY_CONTAINERS` unset, its default):
  after a container's first input it starts one more of the same image and limits, so the next
  cold start links in the source and loads the function in an interpreter already running.
- no standby: fresh runc: the worker started again with `EMBER_STANDBY_CONTAINERS=0`, so every
  cold start mounts the container's disk and layers, runs runc and starts the interpreter, as on
  a host with no standby of that shape.

The settings take turns in halves (standby, no standby, no standby, standby), the worker started
again at each change with one untimed call after it. Each sample's function reports what served
it (benchmarks/apps/cold_app.py: the container's hostname, `sb-…` for a standby and `ta-…` for
a container started for its function, and the age of its first process); a sample that was not
what its row claims is counted in the row's name and left out of its figures, never mixed in.

Each sample goes with a floor run of its own, taken just before it on the same quiet cluster:
wait until the cluster has no container and what the benchmark started is idle, `runc run` of
`python3 -c pass`, `runc run` of the harness's imports, then ember's call. (The floor goes first:
right after ember's call the worker starts a standby, which would weigh on the floor.) So load
that drifts weighs on a row and its floor alike. A sample during which other work used more than
the threshold is taken again, floor and all (`common.guarded`); rows that stayed loaded say so.

The function returns `time.time()` read on its first line; the caller reads `time.time()` just
before `.remote()`, so "to user code" is the difference (one host, one clock) and "to result" is
the caller's wall time for the whole call.

The floors use ember's own `RuncRuntime` exactly as the worker does (the container's disk, the
idmapped image layer under an overlay, `runc run`), timed from `start()` until `wait()` returns,
in a state directory of their own.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import isolation_steps
from benchmarks.common import (
    APPS_DIR,
    FRESH,
    SERVED_LABEL,
    STANDBY,
    Figure,
    LoadTally,
    Outcome,
    cluster_stub,
    flag_figures,
    guarded,
    load_app,
    log,
    percentile,
    served_by,
    summary_ms,
    wait_for_containers,
    wait_until_quiet,
)

TARGET_P50_MS = 250.0
FLOOR_ARGS = ["python3", "-c", "pass"]
# What the harness imports before user code runs, in a container mounted the way the worker
# mounts it: a second reference that tells runc's share of a cold start from Python's.
IMPORTS_ARGS = ["python3", "-c", "import ember.harness.runtime, ember.sdk.serialization, cold_app"]
ZERO_TIMEOUT_S = 60.0  # how long to wait for the previous sample's container to go
SCALED, NEW_APP = "scaled to zero", "new app"
TICK_S = 1 / os.sysconf("SC_CLK_TCK")  # the container age's resolution


@dataclass(frozen=True)
class Sample:
    """One ember cold start, and what served it."""

    to_user_s: float
    to_result_s: float
    hostname: str
    age_s: float  # of the container's first process, at the function's first line

    @property
    def served(self) -> str:
        return served_by(self.hostname)


@dataclass
class Row:
    """The samples of one way to be at zero with one standby setting, and their floors."""

    mode: str
    standby: bool
    samples: list[Sample] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    imports: list[float] = field(default_factory=list)
    tally: LoadTally = field(default_factory=LoadTally)
    wanted: int = 0

    @property
    def expected(self) -> str:
        return STANDBY if self.standby else FRESH

    @property
    def label(self) -> str:
        return f"{self.mode}, {SERVED_LABEL[self.expected]}"

    @property
    def matching(self) -> list[Sample]:
        return [s for s in self.samples if s.served == self.expected]

    @property
    def mismatched(self) -> list[Sample]:
        return [s for s in self.samples if s.served != self.expected]


def run(
    samples: int, limit_s: float, state_dir: Path, new_app: bool, breakdown_samples: int
) -> Outcome:
    outcome = Outcome("cold start")
    module = load_app("cold_app.py")
    stub = cluster_stub()
    floors = Floors(state_dir)
    modes = (SCALED, NEW_APP) if new_app else (SCALED,)
    rows = {(mode, standby): Row(mode, standby) for standby in (True, False) for mode in modes}
    first_half = (samples + 1) // 2
    plan = [(True, first_half), (False, first_half)]
    plan += [(False, samples - first_half), (True, samples - first_half)]
    deadline = time.monotonic() + limit_s
    standbys = Standbys(module, stub)
    try:
        for standby, count in plan:
            if count == 0:
                continue
            standbys.set(standby)
            standbys.untimed_call()
            for mode in modes:
                row = rows[(mode, standby)]
                row.wanted += count
                _sample_row(row, module, stub, floors, count, deadline)
    finally:
        standbys.set(True)
        floors.close()
    for row in rows.values():
        _report(outcome, row)
    outcome.details.append(
        "settings taken in turn (standby, no standby, no standby, standby), "
        f"{first_half} + {samples - first_half} samples of each way to zero in each"
    )
    if breakdown_samples:
        isolation_steps.run(breakdown_samples, state_dir / "breakdown", outcome)
    return outcome


class Standbys:
    """The local cluster's worker with its standby containers on or off."""

    def __init__(self, module: Any, stub: object) -> None:
        self._module, self._stub = module, stub
        self.on = True  # benchmarks.run starts the cluster with the default

    def set(self, on: bool) -> None:
        """Start the worker again with standbys `on` or off, unless it runs so already."""
        from ember.client import local_cluster

        if on == self.on:
            return
        wait_for_containers(self._stub, 0, ZERO_TIMEOUT_S)
        if on:
            os.environ.pop("EMBER_STANDBY_CONTAINERS", None)
        else:
            os.environ["EMBER_STANDBY_CONTAINERS"] = "0"
        started = time.perf_counter()
        local_cluster.restart_worker()
        self.on = on
        log(f"  worker started again with standbys {'on' if on else 'off'}: "
            f"{time.perf_counter() - started:.1f} s")  # fmt: skip

    def untimed_call(self) -> None:
        """One call before a block: the worker settles, and with standbys on a standby of the
        function's shape is left waiting."""
        app, first_line = self._module.app, self._module.first_line
        with app.run():
            first_line.remote()
        wait_for_containers(self._stub, 0, ZERO_TIMEOUT_S)


def _sample_row(
    row: Row, module: Any, stub: object, floors: Floors, count: int, deadline: float
) -> None:
    app, first_line = module.app, module.first_line

    def one(call: Callable[[], Sample]) -> tuple[float, float, Sample]:
        wait_for_containers(stub, 0, ZERO_TIMEOUT_S)
        wait_until_quiet()
        floor = floors.run(FLOOR_ARGS)
        imports = floors.run(IMPORTS_ARGS, harness=True)
        return floor, imports, call()

    def scaled() -> Sample:
        return _call(first_line)

    def new_app() -> Sample:
        with app.run():
            return _call(first_line)

    def take(call: Callable[[], Sample], number: int) -> None:
        what = f"cold start ({row.label}) sample {number}"
        floor, imports, sample = row.tally.add(guarded(what, lambda: one(call)))
        row.floor.append(floor)
        row.imports.append(imports)
        row.samples.append(sample)

    start = len(row.samples)
    if row.mode == SCALED:
        with app.run():
            for number in range(start, start + count):
                if time.monotonic() > deadline:
                    return
                take(scaled, number)
    else:
        for number in range(start, start + count):
            if time.monotonic() > deadline:
                return
            take(new_app, number)


def _call(first_line: Any) -> Sample:
    started = time.time()
    ran_at, hostname, age_s = first_line.remote()
    to_result = time.time() - started
    return Sample(ran_at - started, to_result, hostname, age_s)


def _report(outcome: Outcome, row: Row) -> None:
    label = row.label
    matching, mismatched = row.matching, row.mismatched
    taken = len(row.samples)
    if taken < row.wanted:
        outcome.details.append(f"{label}: stopped at its time limit after {taken} samples")
    name_note = ""
    if mismatched:
        kinds = sorted({s.served for s in mismatched})
        name_note = (
            f"{len(mismatched)} of {taken} samples served otherwise ({', '.join(kinds)}): left out"
        )
    figures: list[Figure] = []
    floor = {q: percentile(row.floor, q) * 1000 for q in (50, 99)} if row.floor else {}
    to_user = [s.to_user_s for s in matching]
    to_result = [s.to_result_s for s in matching]
    for what, values in (("to user code", to_user), ("to result", to_result)):
        for q in (50, 99):
            value = percentile(values, q) * 1000 if values else None
            target = what == "to result" and q == 50
            figures.append(
                Figure(
                    f"cold start ({label}) {what} p{q}",
                    value,
                    "ms",
                    baseline=floor.get(q),
                    baseline_name="runc floor",
                    target=f"<= {TARGET_P50_MS:g} ms" if target else "",
                    met=(value <= TARGET_P50_MS) if target and value is not None else None,
                    note=name_note,
                )
            )
    flag_figures(figures, row.tally)
    outcome.figures += figures
    if matching:
        log(f"  ember cold start ({label}) to result: {summary_ms(to_result)}")
        outcome.details.append(f"{label}, to user code: {summary_ms(to_user)}")
        outcome.details.append(f"{label}, to result: {summary_ms(to_result)}")
    else:
        log(f"  ember cold start ({label}): no sample was served as the row claims")
    each = ", ".join(f"{s.to_result_s * 1000:.0f}{_mark(s)}" for s in row.samples)
    outcome.details.append(
        f"{label}, each sample to result, in order (ms; s: a standby served it, f: a fresh "
        f"container): {each}"
    )
    log(f"  each sample to result, in order (ms): {each}")
    outcome.details.append(f"{label}, {_ages(row.samples)}")
    if mismatched:
        outcome.details.append(
            f"{label}: {len(mismatched)} of {taken} samples were not served as the row claims "
            f"(left out of its figures): "
            + ", ".join(f"{s.to_result_s * 1000:.0f} ms by {s.hostname}" for s in mismatched)
        )
    if row.floor:
        outcome.details.append(
            f"{label}, runc floor taken with each sample: {summary_ms(row.floor)}"
        )
        outcome.details.append(
            f"{label}, runc run of the harness's imports (ember, its serializer, the app module) "
            f"with the worker's mounts, taken with each sample: {summary_ms(row.imports)}"
        )
    outcome.details.append(f"{label}, other work: {row.tally.summary()}")


def _mark(sample: Sample) -> str:
    return {STANDBY: "s", FRESH: "f"}.get(sample.served, "?")


def _ages(samples: list[Sample]) -> str:
    """The containers' ages at their first line, by what served them, and any that contradict
    it (a fresh container older than its call)."""
    parts = []
    for kind in (STANDBY, FRESH):
        ages = [s.age_s for s in samples if s.served == kind]
        if ages:
            parts.append(
                f"{SERVED_LABEL[kind]}: p50 {percentile(ages, 50) * 1000:.0f} ms "
                f"(min {min(ages) * 1000:.0f}, max {max(ages) * 1000:.0f}) in {len(ages)}"
            )
    odd = [s for s in samples if s.served == FRESH and s.age_s > s.to_user_s + 2 * TICK_S]
    text = "container age at the function's first line: " + ("; ".join(parts) or "none")
    if odd:
        text += f"; {len(odd)} fresh containers older than their call (odd)"
    return text


class Floors:
    """`runc run` on the base image through ember's RuncRuntime, as the worker runs it."""

    def __init__(self, state_dir: Path) -> None:
        from ember.builder import ensure_base_image
        from ember.container import RuncRuntime

        self._image_root = ensure_base_image()
        self._runtime = RuncRuntime(state_dir)
        self._state_dir = state_dir
        self._prefix = f"bench-floor-{secrets.token_hex(4)}"
        self._count = 0
        self._mounts: tuple[object, ...] | None = None
        # One untimed run of each first, so the page cache holds what they read, as for ember.
        self.run(FLOOR_ARGS)
        self.run(IMPORTS_ARGS, harness=True)

    def run(self, args: list[str], harness: bool = False) -> float:
        if harness and self._mounts is None:
            self._mounts = _harness_mounts(self._state_dir)
        self._count += 1
        mounts = self._mounts if harness else ()
        return asyncio.run(self._run(f"{self._prefix}-{self._count}", args, mounts or ()))

    async def _run(self, container_id: str, args: list[str], mounts: tuple[object, ...]) -> float:
        from ember.container import ContainerConfig

        runtime = self._runtime
        config = ContainerConfig(
            container_id=container_id,
            image_root=self._image_root,
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
            status = await asyncio.wait_for(runtime.wait(container_id), 60)
            elapsed = time.perf_counter() - started
            if status.exit_code != 0:
                said = runtime.log_paths(container_id)[1].read_text(errors="replace")
                raise RuntimeError(f"the floor container {args} failed ({status}): {said[-2000:]}")
        finally:
            await runtime.remove(container_id)
        return elapsed

    def close(self) -> None:
        asyncio.run(self._runtime.cleanup_stale())


def _harness_mounts(state_dir: Path) -> tuple[object, ...]:
    """The mounts a worker gives a container: the app's source and the compiled ember package."""
    from ember.container import BindMount
    from ember.worker.package import compiled_package

    return (
        BindMount(APPS_DIR, "/app", readonly=True),
        BindMount(compiled_package(state_dir / "package"), "/opt/ember/ember", readonly=True),
    )
