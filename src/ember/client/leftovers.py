"""What a local cluster may leave on the host once its processes have gone, found and removed.

A worker removes its containers as it stops, but one that was killed cannot: its runc
containers, their mounts (the overlay root, the image layer, the container's disk and its loop
device) and their cgroups stay until the next worker start cleans up. Stopping the cluster does
that cleaning itself, so nothing of it stays on the host: `find_leftovers` is what tests check.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from ember.container import RuncRuntime, cgroups, overlay
from ember.imagefs.client import stop_daemon


def _runtime(data_dir: Path) -> RuncRuntime:
    return RuncRuntime(data_dir / "worker" / "runtime")


def remove_leftovers(data_dir: Path) -> list[str]:
    """Stop the host's imagefs daemon, then remove every container, mount and cgroup the cluster
    of `data_dir` left; returns what was found (empty when its processes cleaned up after
    themselves). Run once the worker is gone."""
    stop_daemon(data_dir / "imagefs")  # it outlives worker restarts: stopping it is no leftover
    found = find_leftovers(data_dir)
    asyncio.run(_runtime(data_dir).cleanup_stale())
    for mount_point in overlay.mounts_under(data_dir):
        overlay.unmount(mount_point)
    return found


def find_leftovers(data_dir: Path) -> list[str]:
    """Everything of the cluster of `data_dir` still on the host: containers (runc state or
    directories), mounts, cgroups, loop devices backed by its files, and processes."""
    runtime = _runtime(data_dir)
    directories, states = runtime.list(), runtime.states()
    found = [f"container {name}" for name in directories]
    found += [f"runc state {name}" for name in states]
    mounts = [*overlay.mounts_under(data_dir), *overlay.mounts_under(runtime.roots_dir)]
    found += [f"mount {path}" for path in mounts]
    if runtime.roots_dir.exists():
        found.append(f"directory {runtime.roots_dir}")
    for name in sorted({*directories, *states}):
        found += [f"cgroup {path}" for path in cgroups.directories(cgroups.container_cgroup(name))]
    found += [f"loop device {device}" for device in _loop_devices_backed_by(data_dir)]
    found += [f"process {pid}" for pid in _processes_of(data_dir)]
    return found


def _loop_devices_backed_by(data_dir: Path) -> list[str]:
    prefix = str(data_dir.resolve()).rstrip("/") + "/"
    devices = []
    for entry in Path("/sys/block").glob("loop*"):
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue  # not attached
        if backing.startswith(prefix):
            devices.append(f"/dev/{entry.name} ({backing})")
    return devices


def _processes_of(data_dir: Path) -> list[int]:
    """Processes whose command line names the data directory (ember's parts, runc, the imagefs
    daemon), other than this one."""
    needle = os.fsencode(str(data_dir))
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids
