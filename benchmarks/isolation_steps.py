"""What a container's isolation costs at start: the steps of `RuncRuntime.start`, each timed, with
the disk, the user namespace and the seccomp filter on (as the worker runs containers) and off.

The start is done here step by step the way `RuncRuntime._start_in` does it, so that each part can
be left out for the measurement without a switch in `ember.container` that production code could
take:

- disk: `disk.make_disk` (a sparse copy of an empty file system of the size, made by `mkfs.ext4`
  in the untimed round; a loop device; the mount) holds the writable layer; without it, the
  upper and work directories sit on the host's file system, as before the disks came.
- user namespace: the image's root mounted again through `userns.idmapped_mount`, the writable
  layer owned by the container's root, and the spec's `user` namespace with its id mappings;
  without it, the overlay's lower layer is the image root itself and the spec has no user
  namespace (container root is host root, as before).
- seccomp: the spec's `linux.seccomp` (`seccomp.profile()`); without it, runc loads no filter.

Every variant then mounts the overlay, writes the spec (`spec.build_spec`, the worker's own,
edited as above) and runs `runc run --keep` of `python3 -c pass` to its exit, and is removed by
`RuncRuntime.remove` (runc delete, the cgroup, every mount, the files). A sixth variant is the
worker's own path, `RuncRuntime.start`, `wait` and `remove`, to show that the step-by-step start
costs what the real one does.

The variants take turns: each round runs every variant once, the round's first variant moving
on by one each round; one untimed round first (the page cache, the user namespace's file
descriptor). A round during which other work loaded the machine is taken again (`guarded`).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Figure,
    LoadTally,
    Outcome,
    flag_figures,
    guarded,
    log,
    percentile,
    summary_ms,
)

ARGS = ["python3", "-c", "pass"]
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
EXIT_TIMEOUT_S = 60.0
START_POLL_S = 0.001  # as RuncRuntime polls for runc's pid file


@dataclass(frozen=True)
class Switches:
    disk: bool
    userns: bool
    seccomp: bool


ISOLATED = "isolated (disk, user namespace, seccomp)"
NONE = "no isolation (none of the three)"
PRODUCTION = "RuncRuntime.start, the worker's own path"
VARIANTS: dict[str, Switches | None] = {
    ISOLATED: Switches(disk=True, userns=True, seccomp=True),
    "without the disk": Switches(disk=False, userns=True, seccomp=True),
    "without the user namespace": Switches(disk=True, userns=False, seccomp=True),
    "without seccomp": Switches(disk=True, userns=True, seccomp=False),
    NONE: Switches(disk=False, userns=False, seccomp=False),
    PRODUCTION: None,
}

# The steps a start is timed in, in order ("set-up to exit" is their sum up to the exit).
DISK = "disk (sparse copy of an empty file system, loop device, mount)"
IDMAP = "idmapped mount of the image"
OVERLAY = "overlay mount"
SPEC = "spec written"
STARTED = "runc run until the container's process runs"
EXITED = "then to the process's exit"
TOTAL = "set-up to exit"
REMOVAL = "removal (runc delete, cgroup, unmounts, files)"
STEPS = (DISK, IDMAP, OVERLAY, SPEC, STARTED, EXITED, TOTAL, REMOVAL)


def run(samples: int, state_dir: Path, outcome: Outcome) -> None:
    """Add the breakdown's figures and details to the cold-start outcome."""
    times, namespace_s, tally = _measure(samples, state_dir)
    log(f"  user namespace for idmapped mounts (once per runtime): {namespace_s * 1000:.1f} ms")
    figures: list[Figure] = []
    isolated = _p50(times[ISOLATED][TOTAL])
    none = _p50(times[NONE][TOTAL])
    for name, steps in times.items():
        total = steps[TOTAL]
        if not total:
            continue
        log(f"  container start, {name}: {_steps_text(steps)}")
        outcome.details.append(
            f"isolation breakdown, {name}, python3 -c pass (ms p50 of {len(total)}): "
            f"{_steps_text(steps)}; set-up to exit {summary_ms(total)}"
        )
        if name == ISOLATED:
            baseline, baseline_name = none, "no isolation p50"
        elif name == NONE:
            continue  # the baseline of the row above
        else:
            baseline, baseline_name = isolated, "isolated p50"
        figures.append(
            Figure(
                f"container start to exit, python3 -c pass, {name} p50",
                _p50(total),
                "ms",
                baseline=baseline,
                baseline_name=baseline_name,
            )
        )
    for step, variant in ((DISK, ISOLATED), (IDMAP, ISOLATED), (REMOVAL, ISOLATED)):
        values = times[variant][step]
        if values:
            base = times[NONE][step]
            figures.append(
                Figure(
                    f"isolation step: {step}, p50",
                    _p50(values),
                    "ms",
                    baseline=_p50(base) if base else None,
                    baseline_name="no isolation p50" if base else "none without isolation",
                )
            )
    flag_figures(figures, tally)
    outcome.figures += figures
    outcome.details.append(
        f"isolation breakdown: the user namespace an idmapped mount is made with, once per "
        f"runtime (an `unshare` process): {namespace_s * 1000:.1f} ms"
    )
    outcome.details.append(f"isolation breakdown, rounds and other work: {tally.summary()}")


def _p50(seconds: list[float]) -> float:
    return percentile(seconds, 50) * 1000


def _steps_text(steps: dict[str, list[float]]) -> str:
    return ", ".join(f"{step} {_p50(v):.2f}" for step, v in steps.items() if v and step != TOTAL)


def _measure(
    samples: int, state_dir: Path
) -> tuple[dict[str, dict[str, list[float]]], float, LoadTally]:
    from ember.builder import ensure_base_image
    from ember.container import ContainerConfig, RuncRuntime
    from ember.container.runc import ROOTS_PARENT
    from ember.container.userns import UserNamespace

    image_root = ensure_base_image()
    roots = ROOTS_PARENT / f"bench-{secrets.token_hex(4)}"
    runtime = RuncRuntime(state_dir, roots_dir=roots)
    started = time.perf_counter()
    namespace = UserNamespace(runtime.ids)
    namespace.fd()
    namespace_s = time.perf_counter() - started
    prefix = f"bench-iso-{secrets.token_hex(3)}"
    count = 0

    async def one(name: str) -> dict[str, float]:
        nonlocal count
        count += 1
        config = ContainerConfig(
            container_id=f"{prefix}-{count}",
            image_root=image_root,
            args=ARGS,
            env=ENV,
            hostname="bench",
            cpu=0,
            memory_mb=0,
        )
        switches = VARIANTS[name]
        if switches is None:
            return await _production(runtime, config)
        return await _step_by_step(runtime, state_dir, roots, namespace, config, switches)

    async def in_turn(order: list[str]) -> dict[str, dict[str, float]]:
        return {name: await one(name) for name in order}

    names = list(VARIANTS)
    times: dict[str, dict[str, list[float]]] = {n: {s: [] for s in STEPS} for n in names}
    tally = LoadTally()
    try:
        asyncio.run(in_turn(names))  # untimed: the page cache, the namespace's descriptor
        for number in range(samples):
            first = number % len(names)
            order = names[first:] + names[:first]
            measured = tally.add(
                guarded(
                    f"isolation breakdown, round {number + 1}",
                    lambda order=order: asyncio.run(in_turn(order)),
                )
            )
            for name, steps in measured.items():
                for step, seconds in steps.items():
                    times[name][step].append(seconds)
    finally:
        namespace.close()
        asyncio.run(runtime.cleanup_stale())
    return times, namespace_s, tally


async def _production(runtime: Any, config: Any) -> dict[str, float]:
    """The worker's path: RuncRuntime.start (to the process running), wait, remove."""
    started = time.perf_counter()
    try:
        await runtime.start(config)
        running = time.perf_counter()
        status = await asyncio.wait_for(runtime.wait(config.container_id), EXIT_TIMEOUT_S)
        exited = time.perf_counter()
        _check(status.exit_code, runtime, config.container_id)
    finally:
        removing = time.perf_counter()
        await runtime.remove(config.container_id)
    return {
        STARTED: running - started,
        EXITED: exited - running,
        TOTAL: exited - started,
        REMOVAL: time.perf_counter() - removing,
    }


async def _step_by_step(
    runtime: Any,
    state_dir: Path,
    roots: Path,
    namespace: Any,
    config: Any,
    switches: Switches,
) -> dict[str, float]:
    """`RuncRuntime._start_in`, step by step, each part of the isolation on or off."""
    from ember.container import cgroups, disk, overlay, userns
    from ember.container.spec import build_spec

    steps: dict[str, float] = {}
    container_id = config.container_id
    directory = state_dir / "containers" / container_id
    rootfs = roots / container_id
    begun = time.perf_counter()
    try:
        for path in (roots.parent, roots):  # as RuncRuntime makes them: walkable by anyone
            path.mkdir(exist_ok=True)
            path.chmod(0o711)
        directory.mkdir(parents=True)
        rootfs.mkdir()
        mark = time.perf_counter()
        if switches.disk:
            disk_dir = directory / "disk"
            disk_dir.mkdir()
            templates = state_dir / "disk-templates"  # as RuncRuntime keeps them
            await disk.make_disk(directory / "disk.img", disk_dir, config.disk_mb, templates)
            upper, work = disk_dir / "upper", disk_dir / "work"
            steps[DISK] = time.perf_counter() - mark
        else:
            upper, work = directory / "upper", directory / "work"
        upper.mkdir()
        work.mkdir()
        lower = config.image_root
        if switches.userns:
            mark = time.perf_counter()
            os.chown(upper, runtime.ids.root, runtime.ids.root)
            lower = directory / "image"
            lower.mkdir()
            userns.idmapped_mount(config.image_root, lower, namespace)
            steps[IDMAP] = time.perf_counter() - mark
        mark = time.perf_counter()
        overlay.mount_overlay(lower, upper, work, rootfs)
        steps[OVERLAY] = time.perf_counter() - mark
        mark = time.perf_counter()
        spec = build_spec(
            config,
            rootfs,
            cgroups.container_cgroup(container_id),
            runtime.ids,
            limit_swap=cgroups.swap_limit_supported(),
        )
        linux = spec["linux"]
        if not switches.userns:
            linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] != "user"]
            del linux["uidMappings"], linux["gidMappings"]
        if not switches.seccomp:
            del linux["seccomp"]
        (directory / "config.json").write_text(json.dumps(spec))
        steps[SPEC] = time.perf_counter() - mark
        mark = time.perf_counter()
        pid_file = directory / "pid"
        stdout_path, stderr_path = runtime.log_paths(container_id)
        with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                "runc", "--root", str(state_dir / "runc"), "run", "--keep", "--bundle",
                str(directory), "--pid-file", str(pid_file), container_id,
                stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                start_new_session=True,
            )  # fmt: skip
        while not pid_file.exists() and process.returncode is None:
            await asyncio.sleep(START_POLL_S)
        running = time.perf_counter()
        steps[STARTED] = running - mark
        returncode = await asyncio.wait_for(process.wait(), EXIT_TIMEOUT_S)
        exited = time.perf_counter()
        steps[EXITED] = exited - running
        steps[TOTAL] = exited - begun
        _check(returncode, runtime, container_id)
    finally:
        removing = time.perf_counter()
        await runtime.remove(container_id)
        steps[REMOVAL] = time.perf_counter() - removing
    return steps


def _check(exit_code: int | None, runtime: Any, container_id: str) -> None:
    if exit_code != 0:
        said = runtime.log_paths(container_id)[1].read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the breakdown's container {container_id} failed ({exit_code}): {said}")
