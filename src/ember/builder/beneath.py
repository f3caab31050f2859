"""Paths beneath a root directory, resolved one component at a time without leaving it.

What the builder unpacks comes from outside (registry layers, the SDK's tar of local files) and is
written as root on the worker host, into a tree that already holds symlinks: the image's own
(`/bin -> usr/bin`, `/var/run -> /run`) or ones an earlier entry planted. The host's path lookup
follows each of them, an absolute target to the host's own directory, so `open(root / path)`
may write anywhere. Here every directory is opened from its parent's descriptor with
`O_NOFOLLOW`, so no name is ever looked up from the host's root or through a link the kernel
follows. A symlink met in a parent position is either refused (`follow_in_root=False`: a
registry layer's paths never lead through one) or resolved the way the container will see it
(`follow_in_root=True`): an absolute target from the root of the tree, `..` never above it.

The last component is never followed: callers remove what is there, or create it with
`O_EXCL | O_NOFOLLOW` relative to the directory's descriptor.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

NAME_MAX = 255  # bytes in one name, on every Linux file system
PATH_MAX = 4096  # bytes in a path the kernel takes, its NUL included
_MAX_SYMLINKS = 40  # as the kernel: more hops than this is a loop

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(Exception):
    """A path that would leave its root, or cannot be a path there; the message says why."""


def relative_parts(name: str, root: Path) -> list[str]:
    """The components of `name`, a path relative to `root`; a path that could leave the root, or
    that the host's file systems cannot hold (later steps read the tree by path), is refused."""
    if name.startswith("/"):
        raise UnsafePath("has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafePath("has a '..' in its path")
    for part in parts:
        check_name(part)
    if len(os.fsencode(root)) + 1 + len(os.fsencode("/".join(parts))) >= PATH_MAX:
        raise UnsafePath(f"has a path longer than the host's limit of {PATH_MAX} bytes")
    return parts


def check_name(part: str) -> None:
    """Refuse one path component that no file system can store."""
    if "\0" in part:
        raise UnsafePath("has a NUL byte in its name")
    if len(os.fsencode(part)) > NAME_MAX:
        raise UnsafePath(f"has a name longer than {NAME_MAX} bytes")


@contextlib.contextmanager
def opened_root(root: Path) -> Iterator[int]:
    """A descriptor of `root` itself (a directory the caller made or mounted) for the others."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def directory(
    root: int, parts: Sequence[str], *, create: bool = False, follow_in_root: bool = False
) -> Iterator[int | None]:
    """`open_directory` for a `with` block, which closes the descriptor."""
    fd = open_directory(root, parts, create=create, follow_in_root=follow_in_root)
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def open_directory(
    root: int, parts: Sequence[str], *, create: bool = False, follow_in_root: bool = False
) -> int | None:
    """A descriptor (the caller closes it) of the directory `parts` names under the descriptor
    `root`, or None where it does not exist and `create` is false. With `create`, missing
    directories are made (0o755).

    A component that is a file is refused. A symlink is refused, or with `follow_in_root`
    resolved inside the root: its target read, absolute ones from `root`, `..` stopping at it.
    """
    opened: list[int] = []  # descriptors from the root's child down; the root is the caller's
    walked: list[str] = []  # the resolved path so far, for messages
    pending = list(reversed(parts))
    hops = 0
    try:
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":  # the lexical parent of a resolved path is the real one
                if opened:
                    os.close(opened.pop())
                    walked.pop()
                continue
            check_name(part)
            current = opened[-1] if opened else root
            shown = "/".join([*walked, part])
            try:
                fd = os.open(part, _DIRECTORY, dir_fd=current)
            except FileNotFoundError:
                if not create:
                    return None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=current)
                fd = os.open(part, _DIRECTORY, dir_fd=current)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                if not stat.S_ISLNK(os.stat(part, dir_fd=current, follow_symlinks=False).st_mode):
                    raise UnsafePath(f"leads through {shown!r}, which is not a directory") from None
                if not follow_in_root:
                    raise UnsafePath(f"leads through the symlink {shown!r}") from None
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise UnsafePath(f"meets too many symlinks at {shown!r} (a loop)") from None
                target = os.readlink(part, dir_fd=current)
                if target.startswith("/"):  # the tree's root, never the host's
                    while opened:
                        os.close(opened.pop())
                    walked.clear()
                pending.extend(reversed(target.split("/")))
                continue
            opened.append(fd)
            walked.append(part)
        return opened.pop() if opened else os.dup(root)
    finally:
        for fd in opened:
            os.close(fd)


def child_directory(directory_fd: int, name: str) -> int | None:
    """A descriptor of `name` in the directory if it is a real directory (not a symlink to one),
    else None. The caller closes it."""
    try:
        return os.open(name, _DIRECTORY, dir_fd=directory_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise


def remove(directory_fd: int, name: str) -> None:
    """Remove whatever `name` is in the directory (a directory with its contents); a symlink is
    removed itself, never what it names."""
    try:
        mode = os.stat(name, dir_fd=directory_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(name, dir_fd=directory_fd)  # descriptor-based: never follows a link
    else:
        os.unlink(name, dir_fd=directory_fd)


def create_file(directory_fd: int, name: str) -> int:
    """A new file `name` (mode 0o600 until the caller sets it), open for writing. Anything there
    must have been removed: whatever appears in between is refused, not followed."""
    return os.open(name, _NEW_FILE, 0o600, dir_fd=directory_fd)
