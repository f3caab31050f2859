"""Runtime implementation on runc: each container runs on its own overlay over the image.

Layout under `state_dir`:

    runc/               runc's state (`runc --root`), apart from any other runc user on the host
    containers/<id>/    config.json; image/ (the image's root, idmapped: see `userns.py`);
                        disk.img and disk/ (the container's disk, see `disk.py`, holding upper/
                        and work/, the writable layer, unless the caller brings its own, see
                        `ContainerConfig.upper_dir`); stdout and stderr (the logs); pid
                        (written by runc once started)
    disk-templates/     an empty file system of each disk size, copied for each disk

The overlay root itself is mounted at `roots_dir/<id>` (under /run/ember by default): runc
mounts it from inside the container's user namespace, whose root is an unprivileged host id
that must be able to walk the path, and a data directory under /root is closed to it.

A container is run by a foreground `runc run --keep` in its own session: it survives a restart
of this process, its exit code is runc's, and `--keep` leaves the stopped container's cgroup in
place so the OOM-kill count can still be read until `remove` deletes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

from ember.container import cgroups, disk, overlay, userns
from ember.container.runtime import ContainerConfig, ExitStatus
from ember.container.spec import build_spec
from ember.container.userns import IdMapping
from ember.errors import ExecutionError

_CONTAINER_ID = re.compile(r"[a-z0-9][a-z0-9-]*")

# How often start() looks for runc's pid file; runc itself takes tens of milliseconds.
_START_POLL_S = 0.001

# How long remove() waits for `runc run` to exit once its container is deleted.
_RUNC_EXIT_TIMEOUT_S = 5.0

# How long remove() keeps trying to delete a cgroup whose killed processes are still exiting.
_CGROUP_REMOVE_TIMEOUT_S = 5.0

_ERROR_TAIL_CHARS = 4000

ROOTS_PARENT = Path("/run/ember")


class RuncRuntime:
    """Runs containers with runc; see `ember.container.runtime.Runtime` for the lifecycle."""

    def __init__(
        self,
        state_dir: Path,
        runc: str = "runc",
        *,
        ids: IdMapping | None = None,
        roots_dir: Path | None = None,
    ) -> None:
        self._state_dir = state_dir
        self._containers = state_dir / "containers"
        self._runc_root = state_dir / "runc"
        self._disk_templates = state_dir / "disk-templates"  # see `disk.py`
        self._runc = runc
        self.ids = ids or IdMapping()
        self._namespace = userns.UserNamespace(self.ids)
        # One directory per state directory, so that runtimes of several data directories (test
        # clusters beside a user's) never share mount points.
        digest = hashlib.blake2b(str(state_dir.resolve()).encode(), digest_size=6).hexdigest()
        self._roots = roots_dir or ROOTS_PARENT / f"roots-{digest}"
        # The `runc run` processes this object started; containers started by an earlier
        # process have none and are watched through their pid instead.
        self._processes: dict[str, asyncio.subprocess.Process] = {}

    async def start(self, config: ContainerConfig) -> None:
        container_id = config.container_id
        _check_id(container_id)
        if not config.image_root.is_dir():
            raise ExecutionError(f"the image root {config.image_root} is not a directory")
        directory = self._containers / container_id
        try:
            directory.mkdir(parents=True)
        except FileExistsError:
            raise ExecutionError(f"container {container_id} already exists on this host") from None
        try:
            await self._start_in(directory, config)
        except BaseException:
            await self.remove(container_id)
            raise

    async def _start_in(self, directory: Path, config: ContainerConfig) -> None:
        rootfs, image = self._rootfs(config.container_id), directory / "image"
        _make_walkable(self._roots)
        for path in (rootfs, image):
            path.mkdir()
        if config.upper_dir is None:
            disk_dir = directory / "disk"
            disk_dir.mkdir()
            await disk.make_disk(
                directory / "disk.img", disk_dir, config.disk_mb, self._disk_templates
            )
            upper, work = disk_dir / "upper", disk_dir / "work"
            upper.mkdir()
        else:
            # Overlay's scratch must be on the writable layer's file system: the caller's.
            upper = config.upper_dir
            work = upper.with_name(f"{upper.name}.work-{config.container_id}")
        work.mkdir()
        # The root of the writable layer is the container's root directory: its root owns it.
        os.chown(upper, self.ids.root, self.ids.root)
        userns.idmapped_mount(config.image_root, image, self._namespace)
        overlay.mount_overlay(image, upper, work, rootfs, data_layers=config.data_layers)
        spec = build_spec(
            config,
            rootfs,
            cgroups.container_cgroup(config.container_id),
            self.ids,
            limit_swap=cgroups.swap_limit_supported(),
        )
        (directory / "config.json").write_text(json.dumps(spec))
        pid_file = directory / "pid"
        stdout_path, stderr_path = self.log_paths(config.container_id)
        with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
            process = await self._exec(
                "run", "--keep", "--bundle", str(directory), "--pid-file", str(pid_file),
                config.container_id,
                stdout=stdout, stderr=stderr, start_new_session=True,
            )  # fmt: skip
        self._processes[config.container_id] = process
        # runc writes the pid file once the container's process runs; if runc exits first, it
        # failed, and what it said is in the stderr log.
        while not pid_file.exists():
            if process.returncode is not None:
                said = stderr_path.read_text(errors="replace")[-_ERROR_TAIL_CHARS:]
                raise ExecutionError(
                    f"runc could not start container {config.container_id}: {said.strip()}"
                )
            await asyncio.sleep(_START_POLL_S)

    async def wait(self, container_id: str) -> ExitStatus:
        _check_id(container_id)
        process = self._processes.get(container_id)
        returncode = None if process is None else await process.wait()
        exit_code = killed_by = None
        if returncode is None or returncode < 0:
            # No runc watching (started by an earlier process), or runc itself was killed while
            # the container may live on: wait for the container's process, exit code unknown.
            await self._wait_unwatched(container_id)
        elif returncode > 128:  # runc's convention for a container killed by a signal
            killed_by = returncode - 128
        else:
            exit_code = returncode
        oom_killed = cgroups.oom_kill_count(cgroups.container_cgroup(container_id)) > 0
        return ExitStatus(exit_code=exit_code, signal=killed_by, oom_killed=oom_killed)

    async def _wait_unwatched(self, container_id: str) -> None:
        state = await self._state(container_id)
        if state is None or state["status"] == "stopped":
            return
        try:
            pidfd = os.pidfd_open(state["pid"])
        except ProcessLookupError:
            return
        try:
            # runc checks the process's start time, so asking again after pidfd_open rules out
            # a pid reused by another process in between.
            state = await self._state(container_id)
            if state is not None and state["status"] != "stopped":
                await _readable(pidfd)  # a pidfd turns readable when its process exits
        finally:
            os.close(pidfd)

    async def kill(self, container_id: str, sig: int = signal.SIGKILL) -> None:
        _check_id(container_id)
        returncode, _, stderr = await self._run("kill", container_id, str(int(sig)))
        if returncode != 0:
            state = await self._state(container_id)
            if state is not None and state["status"] != "stopped":
                raise ExecutionError(f"runc kill {container_id} failed: {stderr.strip()}")

    async def remove(self, container_id: str) -> None:
        _check_id(container_id)
        process = self._processes.pop(container_id, None)
        await self._delete(container_id)
        if process is not None and process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), _RUNC_EXIT_TIMEOUT_S)
            except TimeoutError:
                # runc was still creating the container when it was deleted: stop runc and
                # delete whatever it made in the meantime.
                process.kill()
                await process.wait()
                await self._delete(container_id)
        await self._remove_cgroup(container_id)
        # In a thread: right after a container's death its file systems can take a while to let
        # go (half a second, measured, for one whose imagefs daemon had gone), and the caller's
        # loop runs every other container meanwhile.
        await asyncio.to_thread(self._remove_files, container_id)

    @property
    def roots_dir(self) -> Path:
        """Where containers' root file systems are mounted."""
        return self._roots

    def _rootfs(self, container_id: str) -> Path:
        return self._roots / container_id

    def _remove_files(self, container_id: str) -> None:
        rootfs, directory = self._rootfs(container_id), self._containers / container_id
        # The overlay first: it stands on the image and disk mounts below the directory.
        for mount_point in [*overlay.mounts_under(rootfs), *overlay.mounts_under(directory)]:
            overlay.unmount(mount_point)
        for path in (rootfs, directory):
            if path.exists():
                shutil.rmtree(path)

    def log_paths(self, container_id: str) -> tuple[Path, Path]:
        _check_id(container_id)
        directory = self._containers / container_id
        return directory / "stdout", directory / "stderr"

    def list(self) -> list[str]:
        if not self._containers.is_dir():
            return []
        return sorted(entry.name for entry in self._containers.iterdir())

    def states(self) -> list[str]:
        """Ids of the containers runc keeps state for (a container whose directory is gone
        may still have some)."""
        if not self._runc_root.is_dir():
            return []
        return sorted(entry.name for entry in self._runc_root.iterdir() if entry.is_dir())

    async def cleanup_stale(self) -> list[str]:
        ids = {*self.list(), *self.states()}
        for container_id in sorted(ids):
            await self.remove(container_id)
        # Anything still mounted under the state directory belongs to no known container.
        for mount_point in [
            *overlay.mounts_under(self._roots),
            *overlay.mounts_under(self._state_dir),
        ]:
            overlay.unmount(mount_point)
        shutil.rmtree(self._roots, ignore_errors=True)
        return sorted(ids)

    async def _delete(self, container_id: str) -> None:
        if not (self._runc_root / container_id).exists():
            return  # runc has no state for it; skip a runc process start
        returncode, _, stderr = await self._run("delete", "--force", container_id)
        if returncode != 0 and await self._state(container_id) is not None:
            raise ExecutionError(f"runc delete {container_id} failed: {stderr.strip()}")

    async def _remove_cgroup(self, container_id: str) -> None:
        # runc deletes the cgroup with the container; this is for a runc that died part-way.
        path = cgroups.container_cgroup(container_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CGROUP_REMOVE_TIMEOUT_S
        while cgroups.directories(path):
            cgroups.kill_all(path)
            if cgroups.try_remove(path):
                return
            if loop.time() > deadline:
                raise ExecutionError(f"cannot remove cgroup {path}: its processes do not exit")
            await asyncio.sleep(0.01)

    async def _state(self, container_id: str) -> dict[str, Any] | None:
        """runc's view of the container (`status`, `pid`, ...), or None if it has none."""
        returncode, stdout, _ = await self._run("state", container_id)
        return json.loads(stdout) if returncode == 0 else None

    async def _run(self, *args: str) -> tuple[int, str, str]:
        process = await self._exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        stdout, stderr = await process.communicate()
        assert process.returncode is not None
        return process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")

    async def _exec(self, *args: str, **kwargs: Any) -> asyncio.subprocess.Process:
        try:
            return await asyncio.create_subprocess_exec(
                self._runc, "--root", str(self._runc_root), *args,
                stdin=asyncio.subprocess.DEVNULL, **kwargs,
            )  # fmt: skip
        except FileNotFoundError:
            raise ExecutionError(
                f"the OCI runtime {self._runc!r} is not installed (apt-get install runc)"
            ) from None


def _make_walkable(directory: Path) -> None:
    """Make `directory` and its parent, and let anyone walk through them (and no more)."""
    for path in (directory.parent, directory):
        path.mkdir(exist_ok=True)
        path.chmod(0o711)


def _check_id(container_id: str) -> None:
    if not _CONTAINER_ID.fullmatch(container_id):
        raise ExecutionError(
            f"invalid container id {container_id!r}: use lowercase letters, digits and '-', "
            "not starting with '-'"
        )


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
