"""Overlay mounts for container root file systems, and finding mounts left behind.

Mounting goes through libc's mount(2) directly: it costs microseconds, where running
`mount -t overlay` costs a process start on every container start.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
from pathlib import Path

from ember.errors import ExecutionError

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

_MNT_DETACH = 2
_MS_RDONLY = 1

# mountinfo escapes space, tab, newline and backslash in paths as octal (`\040`).
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def mount_overlay(
    lower: Path | list[Path],
    upper: Path,
    work: Path,
    target: Path,
    *,
    data_layers: tuple[Path, ...] = (),
) -> None:
    """Mount read-only `lower` (a list: top first) under writable `upper` on `target`.

    `work` is overlay's scratch. `data_layers` are data-only lower layers: searched in order for
    the content of files whose metadata layer redirects to them, never listed or stat'ed.
    """
    lowers = lower if isinstance(lower, list) else [lower]
    for path in (*lowers, upper, work, *data_layers):
        # The option string is comma-separated and lowerdir is colon-separated.
        if "," in str(path) or ":" in str(path):
            raise ExecutionError(f"cannot use {path} in an overlay mount: it contains ',' or ':'")
    lowerdir = ":".join(map(str, lowers)) + "".join(f"::{path}" for path in data_layers)
    options = f"lowerdir={lowerdir},upperdir={upper},workdir={work}"
    mount("overlay", target, "overlay", options)


def mount(
    source: str | Path, target: Path, fstype: str, options: str = "", *, readonly: bool = False
) -> None:
    """mount(2); `source` may be a file for file systems that mount files (erofs)."""
    flags = _MS_RDONLY if readonly else 0
    result = _libc.mount(
        os.fsencode(source), os.fsencode(target), fstype.encode(), flags, options.encode()
    )
    if result != 0:
        code = ctypes.get_errno()
        raise ExecutionError(f"mounting {fstype} {source} on {target} failed: {os.strerror(code)}")


def unmount(target: Path) -> None:
    """Unmount `target`, detaching it lazily if it is busy; no error if it is not mounted."""
    path = os.fsencode(target)
    if _libc.umount2(path, 0) == 0:
        return
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more), or gone
        return
    if code == errno.EBUSY and _libc.umount2(path, _MNT_DETACH) == 0:
        return
    code = ctypes.get_errno()
    raise ExecutionError(f"unmounting {target} failed: {os.strerror(code)}")


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below `root` in this mount namespace, in unmount order (top first)."""
    with open("/proc/self/mountinfo") as file:
        points = mount_points(file.read())
    prefix = str(root).rstrip("/") + "/"
    found = [Path(p) for p in points if p == str(root) or p.startswith(prefix)]
    found.reverse()  # mountinfo lists mounts in the order they were made, parents first
    return found


def mount_points(mountinfo: str) -> list[str]:
    """The mount point (fifth field) of each line of a /proc/<pid>/mountinfo text, decoded."""
    points = []
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            points.append(_OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4]))
    return points
