"""Applying an image's layers, in order, onto one directory with the overlay whiteout rules.

Layers are unpacked by hand rather than with `tarfile.extractall`: whiteouts need their own rules,
absolute symlink targets (`/usr/bin/python3 -> /usr/bin/python3.11`) are normal in images while
tarfile's `data` filter rejects them, and no filter knows the symlinks that earlier layers left
in the directory. Every path is resolved under the root one component at a time, from directory
descriptors (`builder.beneath`), so the host never follows a symlink of the image. Unpacking runs
as root on the worker host; what each kind of entry does:

- Names must be relative, without `..`, NUL bytes, or names and paths too long for the host. A
  path that leads through a symlink (this layer's or a lower one's) or through a file refuses
  the layer too: layers are diffs of file systems, so real ones never do.
- Symlinks are made as they are, any target included: it is resolved inside the container's
  root later, and nothing here follows it.
- Hard links may only name an entry already in the tree, by a path that passes the same checks
  (a link to a symlink links the symlink itself, a link to a directory is refused).
- Character and block devices and fifos are skipped, and logged: the runtime provides /dev, and
  a layer must not make device nodes on the host. Sockets and unknown kinds are skipped too.
- Whiteouts (`.wh.name`, `.wh..wh..opq`) remove only entries found the same way; one that names
  `.` or `..` refuses the layer. Whiteouts hide lower layers' entries, never their own layer's.
- Owners (numeric), modes (set-user-id and set-group-id bits included), extended attributes (but
  overlay's own) and times are set through descriptors of the entries just made.

A refused entry is an `InvalidError` naming the layer, the entry and why.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import zstandard

from ember.builder import beneath
from ember.builder.beneath import UnsafePath
from ember.errors import ExecutionError, InvalidError

log = logging.getLogger(__name__)

# Layer media type -> compression. The non-distributable ("foreign") kinds are ordinary layers
# that some registries keep elsewhere; if the registry has them they unpack like the others.
_LAYER_COMPRESSION = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}

_CHUNK = 1 << 20

_WHITEOUT_PREFIX = ".wh."
_OPAQUE_WHITEOUT = ".wh..wh..opq"
# Other `.wh..wh.` names are bookkeeping of Docker's old aufs driver, not image content.
_AUFS_META_PREFIX = ".wh..wh."

_MAX_ID = 2**32 - 2  # (2**32 - 1 is -1 to chown: "leave the owner as it is")


def layer_compression(layer: dict[str, Any], name: str) -> str:
    media_type = layer.get("mediaType")
    compression = _LAYER_COMPRESSION.get(str(media_type))
    if compression is None:
        raise InvalidError(f"image {name} has a layer of unsupported type {media_type!r}")
    return compression


@dataclass
class _LayerState:
    """What one layer has done so far; whiteouts only ever hide what lower layers made."""

    kept: set[str] = field(default_factory=set)  # paths this layer wrote, and their parents
    # Directories' attributes are set last: creating entries in a directory moves its time.
    directories: dict[str, tarfile.TarInfo] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # device nodes and fifos
    current: str = ""  # the entry being applied, for messages

    def record(self, relative: str) -> None:
        parts = relative.split("/")
        for end in range(1, len(parts) + 1):
            self.kept.add("/".join(parts[:end]))


def unpack_layer(blob: Path, compression: str, dest: Path, what: str) -> None:
    """Apply the layer in `blob` onto the directory `dest`, never writing outside it."""
    state = _LayerState()
    try:
        with (
            beneath.opened_root(dest) as root,
            _open_decompressed(blob, compression) as stream,
            tarfile.open(fileobj=stream, mode="r|") as archive,
        ):
            for member in archive:
                state.current = member.name
                _apply_member(archive, member, root, dest, state)
            _set_directory_attributes(root, state)
    except UnsafePath as exc:
        raise InvalidError(f"refusing to unpack {what}: entry {state.current!r} {exc}") from exc
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zstandard.ZstdError) as exc:
        raise InvalidError(f"{what} is not a valid {compression} tar archive: {exc}") from exc
    except OSError as exc:
        raise ExecutionError(
            f"could not unpack entry {state.current!r} of {what}: {exc.strerror or exc}"
        ) from exc
    if state.skipped:
        shown = ", ".join(repr(name) for name in state.skipped[:5])
        log.info(
            "%s: skipped %d device nodes and fifos (containers get their /dev from the "
            "runtime): %s%s",
            what,
            len(state.skipped),
            shown,
            ", ..." if len(state.skipped) > 5 else "",
        )


@contextlib.contextmanager
def _open_decompressed(blob: Path, compression: str) -> Iterator[IO[bytes]]:
    with blob.open("rb") as raw:
        if compression == "gzip":
            with gzip.GzipFile(fileobj=raw) as stream:
                yield stream
        elif compression == "zstd":
            # Layers may hold several zstd frames (zstd:chunked); without this, reads stop short
            # at each frame's end.
            with zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True) as reader:
                yield cast(IO[bytes], reader)
        else:
            yield raw


def _apply_member(
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    root: int,
    dest: Path,
    state: _LayerState,
) -> None:
    parts = beneath.relative_parts(member.name, dest)
    if not parts:
        return  # the layer's root entry: `dest` keeps the attributes its owner gave it
    if _is_aufs_metadata(parts):
        return
    *parents, base = parts
    if base.startswith(_WHITEOUT_PREFIX):
        _apply_whiteout(root, parents, base, state)
        return
    if not (member.isdir() or member.isreg() or member.issym() or member.islnk()):
        state.skipped.append(member.name)
        return
    _check_owner(member)
    relative = "/".join(parts)
    with beneath.directory(root, parents, create=True) as parent:
        assert parent is not None  # made if missing
        if member.isdir():
            _make_directory(parent, base)
            state.directories[relative] = member
        elif member.islnk():
            _make_hardlink(root, dest, member.linkname, parts, parent)
        elif member.isreg():
            beneath.remove(parent, base)  # replace what is there; never write through a link
            _write_file(archive, member, parent, base)
        else:
            _make_symlink(member, parent, base)
    state.record(relative)


def _is_aufs_metadata(parts: list[str]) -> bool:
    return any(part.startswith(_AUFS_META_PREFIX) and part != _OPAQUE_WHITEOUT for part in parts)


def _check_owner(member: tarfile.TarInfo) -> None:
    for kind, value in (("owner", member.uid), ("group", member.gid)):
        if not 0 <= value <= _MAX_ID:
            raise UnsafePath(f"has the {kind} id {value}, which no file can have")


def _make_directory(parent: int, name: str) -> None:
    existing = beneath.child_directory(parent, name)
    if existing is not None:
        os.close(existing)  # a directory stays, with what lower layers put in it
        return
    beneath.remove(parent, name)  # a symlink or file gives way; its contents never follow
    os.mkdir(name, 0o755, dir_fd=parent)


def _write_file(archive: tarfile.TarFile, member: tarfile.TarInfo, parent: int, name: str) -> None:
    source = archive.extractfile(member)
    assert source is not None  # a regular file always has contents, empty or not
    with source, os.fdopen(beneath.create_file(parent, name), "wb") as out:
        shutil.copyfileobj(source, out, _CHUNK)
        out.flush()  # before the times are set: a later write would move them
        _set_attributes(out.fileno(), member)


def _make_symlink(member: tarfile.TarInfo, parent: int, name: str) -> None:
    target = member.linkname
    if not target or "\0" in target or len(os.fsencode(target)) >= beneath.PATH_MAX:
        raise UnsafePath(f"is a symlink to {target[:100]!r}, which no file system can store")
    beneath.remove(parent, name)
    os.symlink(target, name, dir_fd=parent)  # any target, absolute ones too: nothing follows it
    if os.geteuid() == 0:
        os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
    # No extended attributes: the kernel takes no user.* ones on symlinks, and capabilities
    # belong to files.
    with contextlib.suppress(OverflowError, ValueError):
        os.utime(name, (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)


def _make_hardlink(root: int, dest: Path, linkname: str, parts: list[str], parent: int) -> None:
    def refused(why: object) -> UnsafePath:
        return UnsafePath(f"is a hard link to {linkname!r}, which {why}")

    try:
        source_parts = beneath.relative_parts(linkname, dest)
    except UnsafePath as exc:
        raise refused(exc) from None
    if source_parts == parts:
        return  # a link to itself: it is there already
    if not source_parts or source_parts[: len(parts)] == parts:
        raise refused("is not an entry it could stand beside")
    *source_parents, source_name = source_parts
    try:
        source_parent = beneath.open_directory(root, source_parents)
    except UnsafePath as exc:
        raise refused(exc) from None
    if source_parent is None:
        raise refused("does not exist")
    try:
        try:
            source_mode = os.stat(source_name, dir_fd=source_parent, follow_symlinks=False).st_mode
        except FileNotFoundError:
            raise refused("does not exist") from None
        if stat.S_ISDIR(source_mode):
            raise refused("is a directory")
        beneath.remove(parent, parts[-1])
        # follow_symlinks=False: a link to a symlink links the symlink, never what it names.
        # The new name shares the inode, so the attributes set on the source already apply.
        os.link(
            source_name,
            parts[-1],
            src_dir_fd=source_parent,
            dst_dir_fd=parent,
            follow_symlinks=False,
        )
    finally:
        os.close(source_parent)


def _set_directory_attributes(root: int, state: _LayerState) -> None:
    by_depth = sorted(state.directories.items(), key=lambda item: item[0].count("/"), reverse=True)
    for relative, member in by_depth:
        state.current = member.name
        *parents, name = relative.split("/")
        try:
            with beneath.directory(root, parents) as parent:
                fd = None if parent is None else beneath.child_directory(parent, name)
        except UnsafePath:
            continue  # a later entry put a symlink or file above it: this directory is gone
        if fd is None:
            continue  # a later entry replaced it with something else
        try:
            _set_attributes(fd, member)
        finally:
            os.close(fd)


def _set_attributes(fd: int, member: tarfile.TarInfo) -> None:
    """Owner, mode, extended attributes and time of a file or directory made from `member`."""
    if os.geteuid() == 0:
        # Numeric ids: names would be looked up in the host's /etc/passwd, not the image's.
        os.fchown(fd, member.uid, member.gid)
    os.fchmod(fd, member.mode & 0o7777)  # after chown, which clears set-user-id bits
    _set_xattrs(fd, member)  # after chown too, which clears file capabilities
    # A time out of the host's range is no reason to refuse an image: the entry keeps today's.
    with contextlib.suppress(OverflowError, ValueError):
        os.utime(fd, (member.mtime, member.mtime))


def _set_xattrs(fd: int, member: tarfile.TarInfo) -> None:
    """Extended attributes, chiefly file capabilities (`ping` needs cap_net_raw)."""
    for key, value in member.pax_headers.items():
        if not key.startswith("SCHILY.xattr."):
            continue
        name = key.removeprefix("SCHILY.xattr.")
        if name.startswith("trusted.overlay."):
            continue  # overlay's own bookkeeping, not image content (packing drops it too)
        # Best effort, like Docker: some file systems or attribute namespaces refuse them.
        with contextlib.suppress(OSError, ValueError):
            os.setxattr(fd, name, value.encode("utf-8", "surrogateescape"))


def _apply_whiteout(root: int, parents: list[str], base: str, state: _LayerState) -> None:
    relative_dir = "/".join(parents)
    hidden = base.removeprefix(_WHITEOUT_PREFIX)
    if base != _OPAQUE_WHITEOUT and hidden in ("", ".", ".."):
        # `.wh...` would name the directory above, which for the root is outside the image.
        raise UnsafePath(f"is a whiteout in {relative_dir or '/'!r} that names no entry of its own")
    with beneath.directory(root, parents) as directory:
        if directory is None:
            return  # nothing below a directory that does not exist to hide
        if base == _OPAQUE_WHITEOUT:
            _clear_lower_entries(directory, relative_dir, state.kept)
            return
        relative = f"{relative_dir}/{hidden}" if relative_dir else hidden
        if relative not in state.kept:
            beneath.remove(directory, hidden)


def _clear_lower_entries(directory: int, relative_dir: str, kept: set[str]) -> None:
    """Empty a directory of what lower layers put there, keeping what this layer wrote."""
    for name in os.listdir(directory):
        relative = f"{relative_dir}/{name}" if relative_dir else name
        if relative not in kept:
            beneath.remove(directory, name)
            continue
        child = beneath.child_directory(directory, name)
        if child is not None:
            try:
                _clear_lower_entries(child, relative, kept)
            finally:
                os.close(child)
