"""User namespaces: container root is an unprivileged id on the host.

Every container runs in a user namespace that maps its ids 0..size-1 to host ids
`host_base..host_base+size-1`, none of which is a host user. A process that escapes its other
namespaces is then that unprivileged id on the host, and the capabilities it holds apply only
inside its own namespaces.

Image files must still look root-owned inside. Images are stored with their real owners (uid
0 for most files), so the read-only image layer is given to the overlay as an *idmapped mount*
(Linux 5.12+, erofs since 5.19): a clone of the image's mount that shows on-disk owner `n` as
host id `host_base + n`, which the container's namespace shows as `n` again. What the container
writes lands in its writable layer owned by host ids of the range (`to_image` turns them back
into image owners when a build step's writes become an image).
"""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ember.errors import ExecutionError

# Above the ranges /etc/subuid hands to users (100000 + 65536 n) and systemd's dynamic users,
# and in no range that systemd allocates on its own.
DEFAULT_HOST_BASE = 0x7F000000
SIZE = 65536

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442  # the same on x86_64 and arm64
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_IDMAP = 0x00100000
_MOUNT_ATTR = struct.Struct("QQQQ")  # attr_set, attr_clr, propagation, userns_fd

_NAMESPACE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class IdMapping:
    """Container ids 0..size-1 are host ids host_base..host_base+size-1."""

    host_base: int = DEFAULT_HOST_BASE
    size: int = SIZE

    @property
    def root(self) -> int:
        """The host id of the container's root (uid and gid)."""
        return self.host_base

    def to_image(self, host_id: int) -> int:
        """The image owner a host id written by a container stands for (other ids are kept: the
        worker's own writes are real owners)."""
        if self.host_base <= host_id < self.host_base + self.size:
            return host_id - self.host_base
        return host_id

    def oci(self) -> list[dict[str, int]]:
        """The mapping as the OCI spec's `uidMappings` and `gidMappings` write it."""
        return [{"containerID": 0, "hostID": self.host_base, "size": self.size}]

    def proc_map(self) -> str:
        """The mapping as /proc/<pid>/uid_map takes it."""
        return f"0 {self.host_base} {self.size}\n"


class UserNamespace:
    """A user namespace with the mapping, held open by a file descriptor: what an idmapped mount
    is made with. Made once per runtime, on first use (a short-lived `unshare` process is its
    first member); a runtime keeps it for as long as the process lives."""

    def __init__(self, mapping: IdMapping) -> None:
        self.mapping = mapping
        self._fd: int | None = None

    def fd(self) -> int:
        if self._fd is None:
            self._fd = _open_namespace(self.mapping)
        return self._fd

    def close(self) -> None:
        """Let the namespace go (the isolation benchmark makes one per sample)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _open_namespace(mapping: IdMapping) -> int:
    try:
        process = subprocess.Popen(
            ["unshare", "--user", "cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise ExecutionError("unshare is not installed (apt-get install util-linux)") from None
    try:
        ours = os.readlink("/proc/self/ns/user")
        deadline = time.monotonic() + _NAMESPACE_TIMEOUT_S
        # `cat` runs once unshare has entered the new namespace.
        while os.readlink(f"/proc/{process.pid}/ns/user") == ours:
            if process.poll() is not None or time.monotonic() > deadline:
                raise ExecutionError("cannot make a user namespace on this host")
            time.sleep(0.001)
        for name in ("uid_map", "gid_map"):
            Path(f"/proc/{process.pid}/{name}").write_text(mapping.proc_map())
        return os.open(f"/proc/{process.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait()


def idmapped_mount(source: Path, target: Path, namespace: UserNamespace) -> None:
    """Mount a clone of the mount at `source` on `target`, its owners shifted into the
    namespace's host range (unmount it with `overlay.unmount`)."""
    tree = _libc.syscall(
        _SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(source), _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC
    )
    if tree < 0:
        _fail(f"cannot clone the mount at {source}")
    try:
        attr = ctypes.create_string_buffer(
            _MOUNT_ATTR.pack(_MOUNT_ATTR_IDMAP, 0, 0, namespace.fd())
        )
        if _libc.syscall(_SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH, attr, _MOUNT_ATTR.size):
            _fail(f"cannot idmap the mount at {source} (needs Linux 5.19 or later for erofs)")
        if _libc.syscall(
            _SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, os.fsencode(target), _MOVE_MOUNT_F_EMPTY_PATH
        ):
            _fail(f"cannot attach the idmapped mount of {source} at {target}")
    finally:
        os.close(tree)


def _fail(what: str) -> None:
    code = ctypes.get_errno()
    raise ExecutionError(f"{what}: {os.strerror(code)}")
