"""The container runtime seam: what the worker asks of an OCI runtime, and the values it passes."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ember.container.userns import IdMapping

# A container's disk when its function names none (`ephemeral_disk=`, MiB).
DEFAULT_DISK_MB = 10240


@dataclass(frozen=True)
class BindMount:
    """A host path made visible inside the container."""

    source: Path
    target: str
    readonly: bool = True


@dataclass(frozen=True)
class ContainerConfig:
    """Everything needed to start one container."""

    container_id: str  # [a-z0-9-]+ (not starting with '-'), unique on the host
    image_root: Path  # read-only root file system of the image: the overlay's lower directory
    args: list[str]
    env: dict[str, str]
    hostname: str
    cwd: str = "/"
    mounts: tuple[BindMount, ...] = ()
    cpu: float = 1.0  # cores, enforced as a CFS quota; 0 or less means unlimited
    memory_mb: int = 0  # hard memory limit in MiB (swap included); 0 means unlimited
    pids_limit: int = 4096  # 0 or less means unlimited
    # Data-only layers under `image_root`, searched in order for the content its files redirect
    # to (an imagefs image's object directory, then its FUSE mount).
    data_layers: tuple[Path, ...] = ()
    host_network: bool = False  # share the host's network namespace (image builds need it)
    # The size of the container's disk, the file system its writable layer lives on: writes
    # past it fail with ENOSPC.
    disk_mb: int = DEFAULT_DISK_MB
    # The writable layer, when the caller wants it after the container is gone (a build step's
    # changes) and bounds its size itself; overlay's scratch goes beside it, in
    # `<upper_dir>.work-<container_id>`, also the caller's to remove. By default the runtime
    # makes a writable layer on a disk of `disk_mb` and removes both with the container.
    upper_dir: Path | None = None


@dataclass(frozen=True)
class ExitStatus:
    """How a container's init process ended.

    Exactly one of `exit_code` and `signal` is set when the runtime saw the process end; both are
    None when it could not (the container ended while no runtime process was watching it).
    """

    exit_code: int | None
    signal: int | None  # the signal that killed the process
    oom_killed: bool  # the kernel OOM killer killed a process of this container


class Runtime(Protocol):
    """Runs containers on this host, each in a user namespace that maps its ids to the host ids
    of `ids` (what a container writes is owned by those).

    Lifecycle of one container:

        await runtime.start(config)       # root fs mounted, limits applied, process running
        stdout, stderr = runtime.log_paths(config.container_id)   # readable while it runs
        status = await runtime.wait(config.container_id)          # or kill() first to stop it
        await runtime.remove(config.container_id)                 # logs are gone after this

    Containers outlive the process that started them: after a restart, `list()` names those on
    disk, `wait()` still reports when they end (with an unknown exit code), and `cleanup_stale()`
    kills and removes them all. `remove()` may be called at any point, and again.
    """

    ids: IdMapping

    async def start(self, config: ContainerConfig) -> None:
        """Start the container; return once its process runs. Raises ExecutionError if it cannot."""
        ...

    async def wait(self, container_id: str) -> ExitStatus:
        """Wait for the container's init process to exit (at once if it has, or is unknown)."""
        ...

    async def kill(self, container_id: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the container's init process; no error if it has already exited."""
        ...

    async def remove(self, container_id: str) -> None:
        """Kill the container if needed and delete everything `start` made; idempotent."""
        ...

    def log_paths(self, container_id: str) -> tuple[Path, Path]:
        """The files receiving the container's stdout and stderr."""
        ...

    def list(self) -> list[str]:
        """Ids of the containers that have state on disk, running or not."""
        ...

    async def cleanup_stale(self) -> list[str]:
        """Kill and remove every container found on disk, and the runtime's own directories
        outside its state directory (after a crash, and as a worker stops); return their ids."""
        ...
