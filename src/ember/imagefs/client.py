"""The worker's side of the host's imagefs daemon: start it if needed, then ask it for images.

The daemon runs in a session of its own so a worker restart leaves it running; a new worker
finds it through its socket. `stop_daemon` is for shutting the whole host down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ember import errors
from ember.container import overlay
from ember.imagefs.daemon import PID_NAME, SOCKET_NAME
from ember.imagefs.manifest import ImageConfig

_START_TIMEOUT = 30.0


@dataclass(frozen=True)
class PreparedImage:
    """What a container of the image needs: the overlay layers and the image's config."""

    metadata: Path  # the mounted erofs metadata image: overlay's lower layer
    data_layers: tuple[Path, ...]  # then the host's objects, then the FUSE mount
    config: ImageConfig
    recorded: bool  # a start of this image has recorded its reads (anywhere)
    since: float  # the daemon's clock when prepared: the start of a recording
    daemon: str  # the daemon's life that prepared it: its mounts end with that life
    daemon_pid: int = 0  # that daemon's process

    def as_recorded(self) -> PreparedImage:
        return replace(self, recorded=True)


class ImageFSClient:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._socket = root / SOCKET_NAME

    async def request(self, op: str, **arguments: object) -> dict:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self._socket))
        except (FileNotFoundError, ConnectionRefusedError):
            raise errors.ConnectionError("the imagefs daemon is not running") from None
        try:
            writer.write(json.dumps({"op": op, **arguments}).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        except ConnectionError as error:  # the daemon died or is stopping
            raise errors.ConnectionError(f"the imagefs daemon went away: {error}") from None
        finally:
            writer.close()
        if not line:
            raise errors.ConnectionError("the imagefs daemon closed the connection")
        answer = json.loads(line)
        if not answer.pop("ok"):
            kind = getattr(errors, answer["kind"], errors.ExecutionError)
            raise kind(answer["message"])
        return answer

    async def ensure_daemon(self, store_url: str, limit_bytes: int) -> None:
        """Reuse the running daemon, or start one and wait until it answers."""
        try:
            await self.request("ping")
            return
        except errors.ConnectionError:
            pass
        self.root.mkdir(parents=True, exist_ok=True)
        log_file = (self.root / "daemon.log").open("ab")
        command = [sys.executable, "-m", "ember.imagefs.daemon", "--root", str(self.root)]
        command += ["--store", store_url, "--limit-bytes", str(limit_bytes)]
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log_file.close()
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise errors.ExecutionError(
                    f"the imagefs daemon exited with code {process.returncode}; "
                    f"see {self.root / 'daemon.log'}"
                )
            try:
                await self.request("ping")
                return
            except errors.ConnectionError:
                await asyncio.sleep(0.05)
        raise errors.ExecutionError(
            f"the imagefs daemon did not start; see {self.root / 'daemon.log'}"
        )

    async def prepare(self, image_id: str, *, records: bool = False) -> PreparedImage:
        """The image, ready for a container's root. `records`: this is a container's start,
        which records what it reads if no start of the image has (a build step's is not)."""
        answer = await self.request("prepare", image=image_id, records=records)
        return PreparedImage(
            Path(answer["metadata"]),
            tuple(Path(p) for p in answer["data_layers"]),
            ImageConfig(**answer["config"]),
            answer["recorded"],
            answer["now"],
            answer["daemon"],
            answer["pid"],
        )

    async def record(self, image_id: str, since: float) -> int:
        """Save what a start of the image read since `since` (small files opened, reads of
        large files) as its recording."""
        return (await self.request("record", image=image_id, since=since))["chunks"]

    async def stats(self) -> dict:
        return await self.request("stats")

    async def collect(self, keep: set[str]) -> int:
        return (await self.request("collect", keep=sorted(keep)))["objects_removed"]


def stop_daemon(root: Path, timeout: float = 10.0) -> None:
    """Stop every daemon serving `root` and wait for them to exit; then unmount whatever a
    killed one left mounted under `root`."""
    pids = _daemon_pids(root)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_running(pid) for pid in pids):
        time.sleep(0.02)
    for pid in pids:
        if _running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for mount_point in overlay.mounts_under(root):
        if mount_point != root:  # the root may be a disk of its own, mounted by the operator
            overlay.unmount(mount_point)


def _daemon_pids(root: Path) -> list[int]:
    """Daemons for `root`: the one in the pid file, and any other (one starting while a worker
    stopped, say) found by its command line."""
    wanted = ["-m", "ember.imagefs.daemon", "--root", str(root)]
    found = set()
    with contextlib.suppress(FileNotFoundError, ValueError):
        found.add(int((root / PID_NAME).read_text()))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(arguments[i : i + 4] == wanted for i in range(len(arguments))):
            found.add(int(entry.name))
    return sorted(pid for pid in found if _running(pid))


def _running(pid: int) -> bool:
    """Whether `pid` is alive and not a zombie (the worker that started it may not reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
