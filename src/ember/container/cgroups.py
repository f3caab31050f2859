"""A container's cgroup on either hierarchy: cgroup v1 (one tree per controller, as on hybrid
hosts) or pure cgroup v2 (one unified tree).

`cgroups_path` is the spec's `linux.cgroupsPath`, `/ember/<container id>` (see `container_cgroup`);
runc creates it below the root of every hierarchy.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")

# All containers' cgroups sit under one parent, apart from the host's services.
CGROUP_PARENT = "ember"


def container_cgroup(container_id: str) -> str:
    """The cgroups path of a container, as given to runc."""
    return f"/{CGROUP_PARENT}/{container_id}"


@functools.cache
def is_unified() -> bool:
    """True on a pure cgroup v2 host; False where the controllers are cgroup v1 hierarchies."""
    # On a hybrid host the v2 tree (if any) sits at /sys/fs/cgroup/unified, not at the root.
    return (CGROUP_ROOT / "cgroup.controllers").exists()


@functools.cache
def _hierarchy_roots() -> tuple[Path, ...]:
    if is_unified():
        return (CGROUP_ROOT,)
    # Symlinks such as cpu -> cpu,cpuacct name a hierarchy already listed.
    return tuple(
        entry
        for entry in sorted(CGROUP_ROOT.iterdir())
        if entry.is_dir() and not entry.is_symlink()
    )


@functools.cache
def swap_limit_supported() -> bool:
    """Whether a container's swap can be limited; runc fails on a swap limit it cannot set."""
    # cgroup v1 has memsw files only with swap accounting on; runc skips v2's when it is off.
    return is_unified() or (CGROUP_ROOT / "memory" / "memory.memsw.limit_in_bytes").exists()


def directories(cgroups_path: str) -> list[Path]:
    """The directories of the cgroup that exist, one per hierarchy."""
    relative = cgroups_path.strip("/")
    return [root / relative for root in _hierarchy_roots() if (root / relative).is_dir()]


def oom_kill_count(cgroups_path: str) -> int:
    """How many processes of the cgroup the OOM killer has killed; 0 if the cgroup is gone."""
    relative = cgroups_path.strip("/")
    if is_unified():
        path = CGROUP_ROOT / relative / "memory.events"
    else:
        path = CGROUP_ROOT / "memory" / relative / "memory.oom_control"
    try:
        text = path.read_text()
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ENODEV):  # ENODEV: removed while being read
            return 0
        raise
    return parse_oom_kill(text)


def parse_oom_kill(text: str) -> int:
    """The `oom_kill N` counter of a v2 memory.events or v1 memory.oom_control file."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill":
            return int(value)
    return 0


def kill_all(cgroups_path: str) -> None:
    """SIGKILL every process in the cgroup."""
    for directory in directories(cgroups_path):
        with contextlib.suppress(FileNotFoundError):
            for pid in (directory / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def try_remove(cgroups_path: str) -> bool:
    """Remove the cgroup's directories; False if some remain because processes are still inside."""
    removed = True
    for directory in directories(cgroups_path):
        try:
            directory.rmdir()
        except FileNotFoundError:
            pass
        except OSError:  # EBUSY while killed processes are still exiting
            removed = False
    return removed
