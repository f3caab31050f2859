"""Starting a container before it knows its function, and removing one.

A container starts in two halves. The first needs only the container's shape (its image and
resource limits): the image's layers prepared, an empty `/app` bound in, runc started, and the
harness connected over its socket with `ember` imported. The second gives it its function: the
app's source linked into `/app`, then a `load` frame naming the module and the function (see
`ember.proto.harness_frames`). A container task does both at once; the standby pool
(`worker/standby.py`) does the first half ahead of time, so a cold start on a host that ran
the image recently skips runc and the interpreter's own start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ember.container import BindMount, ContainerConfig, ExitStatus, Runtime
from ember.container.runtime import DEFAULT_DISK_MB
from ember.imagefs.client import PreparedImage
from ember.proto import api_pb2
from ember.worker.harness_link import HarnessLink
from ember.worker.images import ImageRoots

T = TypeVar("T")

SOURCE_DIR = "/app"
SOCKET_DIR = "/run/ember"
# Files in the socket directory the harness writes its stdout and stderr to (see worker/logs.py).
HARNESS_OUTPUT = {"stdout": 1, "stderr": 2}
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ContainerShape:
    """What a container is made with before it knows its function."""

    image_id: str
    cpu: float  # the limits, as ContainerConfig takes them
    memory_mb: int
    disk_mb: int = DEFAULT_DISK_MB

    @classmethod
    def of(cls, function: api_pb2.FunctionDefinition) -> ContainerShape:
        resources = function.resources
        return cls(
            function.image_id,
            resources.cpu_limit,
            int(resources.memory_limit_mb),
            int(resources.ephemeral_disk_mb) or DEFAULT_DISK_MB,
        )


@dataclass(frozen=True)
class StartedContainer:
    """A running container whose harness is (or will be) connected, waiting for its function."""

    runtime_id: str  # the runtime's name for it: the control plane's id, or a standby's own
    shape: ContainerShape
    image: PreparedImage
    link: HarnessLink
    socket_dir: Path
    app_dir: Path  # bound read-only at /app; empty until the container is given its function
    exited: asyncio.Task[ExitStatus]

    async def until_exit(self, work: Awaitable[T], timeout: float | None) -> T | ExitStatus:
        """`work`'s result, or the container's exit status if it exits first; TimeoutError
        after `timeout`."""
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait(
            {task, self.exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            return task.result()
        task.cancel()
        if self.exited in done:
            return self.exited.result()
        raise TimeoutError


class ContainerStarter:
    def __init__(
        self, runtime: Runtime, images: ImageRoots, state_dir: Path, ember_package: Path
    ) -> None:
        self._runtime = runtime
        self._images = images
        self._sockets = state_dir / "sockets"
        self._apps = state_dir / "apps"
        self._ember_package = ember_package

    def clean(self) -> None:
        """Remove what containers of an earlier life of the worker left (their runtime state
        is the runtime's to clean)."""
        for directory in (self._sockets, self._apps):
            shutil.rmtree(directory, ignore_errors=True)

    async def prepare(self, shape: ContainerShape) -> PreparedImage:
        """The image's layers on this host (fast once the host has the image)."""
        return await self._images.root_for(shape.image_id)

    async def start(
        self,
        runtime_id: str,
        shape: ContainerShape,
        image: PreparedImage,
        *,
        standby: bool = False,
    ) -> StartedContainer:
        """The first half: a running container of `shape` on `image` (as `prepare` gave it);
        its harness connects on its own. A standby's harness also imports what running inputs
        needs while it waits."""
        socket_dir, app_dir = self._sockets / runtime_id, self._apps / runtime_id
        link = HarnessLink()
        try:
            socket_dir.mkdir(parents=True)
            app_dir.mkdir(parents=True)
            await link.listen(socket_dir / "harness.sock")
            for name in HARNESS_OUTPUT:
                # The container's root, an unprivileged host id, writes them.
                (socket_dir / name).touch()
                os.chown(socket_dir / name, self._runtime.ids.root, self._runtime.ids.root)
            config = self._config(runtime_id, shape, image, socket_dir, app_dir, standby)
            await self._runtime.start(config)
        except BaseException:
            await link.close()
            _remove_dirs(socket_dir, app_dir)
            raise
        exited = asyncio.create_task(self._runtime.wait(runtime_id))
        return StartedContainer(runtime_id, shape, image, link, socket_dir, app_dir, exited)

    async def stop(self, container: StartedContainer) -> None:
        """Kill the container's processes; what it wrote stays readable until `remove`."""
        await self._runtime.kill(container.runtime_id)
        await container.link.close()

    async def remove(self, container: StartedContainer) -> None:
        """Kill the container if `stop` did not, and delete everything `start` made."""
        await container.link.close()
        await self._runtime.remove(container.runtime_id)  # kills what is still running
        await asyncio.to_thread(_remove_dirs, container.socket_dir, container.app_dir)

    def output_streams(self, container: StartedContainer) -> list[tuple[int, Path]]:
        """The container's output files, as (1 for stdout or 2 for stderr, path)."""
        stdout, stderr = self._runtime.log_paths(container.runtime_id)
        streams = [(1, stdout), (2, stderr)]
        streams += [(fd, container.socket_dir / name) for name, fd in HARNESS_OUTPUT.items()]
        return streams

    def _config(
        self,
        runtime_id: str,
        shape: ContainerShape,
        image: PreparedImage,
        socket_dir: Path,
        app_dir: Path,
        standby: bool,
    ) -> ContainerConfig:
        image_path = image.config.env.get("PYTHONPATH")
        return ContainerConfig(
            container_id=runtime_id,
            image_root=image.metadata,
            data_layers=image.data_layers,
            args=[image.config.python, "-m", "ember.harness"],
            env={
                "PATH": _PATH,
                "HOME": "/root",
                "LANG": "C.UTF-8",
                **image.config.env,
                # /root holds add_local_python_source modules, importable whatever the workdir.
                "PYTHONPATH": ":".join(
                    filter(None, [SOURCE_DIR, image_path, "/root", "/opt/ember"])
                ),
                "PYTHONUNBUFFERED": "1",
                "EMBER_SOCKET": f"{SOCKET_DIR}/harness.sock",
                **{f"EMBER_{name.upper()}": f"{SOCKET_DIR}/{name}" for name in HARNESS_OUTPUT},
                "EMBER_SOURCE_DIR": SOURCE_DIR,
                "EMBER_DISK_MB": str(shape.disk_mb),
                **({"EMBER_STANDBY": "1"} if standby else {}),
            },
            hostname=runtime_id,
            cwd=image.config.workdir or "/",
            mounts=(
                BindMount(app_dir, SOURCE_DIR, readonly=True),
                BindMount(self._ember_package, "/opt/ember/ember", readonly=True),
                BindMount(socket_dir, SOCKET_DIR, readonly=False),
            ),
            cpu=shape.cpu,
            memory_mb=shape.memory_mb,
            disk_mb=shape.disk_mb,
        )


def link_source(source: Path, app_dir: Path) -> None:
    """Fill a container's /app with the app's source: hard links to the host's unpacked copy
    (the mount is read-only), copies where the two are on different file systems."""

    def link_or_copy(from_path: str, to_path: str) -> None:
        try:
            os.link(from_path, to_path)
        except OSError:
            shutil.copy2(from_path, to_path)

    shutil.copytree(source, app_dir, copy_function=link_or_copy, dirs_exist_ok=True)


def _remove_dirs(*directories: Path) -> None:
    for directory in directories:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(directory)
