"""Applying an image's layers, in order, onto one directory with the overlay whiteout rules.

Layers are unpacked by hand rather than with `tarfile.extractall`: whiteouts need their own rules,
absolute symlink targets (`/usr/bin/python3 -> /usr/bin/python3.11`) are normal in images while
tarfile's safety filters reject them, and no entry may write outside the directory, neither by
its name nor through a symlink an earlier entry made.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import zstandard

from ember.errors import InvalidError

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


def layer_compression(layer: dict[str, Any], name: str) -> str:
    media_type = layer.get("mediaType")
    compression = _LAYER_COMPRESSION.get(str(media_type))
    if compression is None:
        raise InvalidError(f"image {name} has a layer of unsupported type {media_type!r}")
    return compression


class _UnsafeEntry(Exception):
    """A layer entry that would write outside the image, or that cannot be applied."""


@dataclass
class _LayerState:
    """What one layer has done so far; whiteouts only ever hide what lower layers made."""

    kept: set[str] = field(default_factory=set)  # paths this layer wrote, and their parents
    directories: list[tuple[Path, tarfile.TarInfo]] = field(default_factory=list)

    def record(self, relative: str) -> None:
        parts = relative.split("/")
        for end in range(1, len(parts) + 1):
            self.kept.add("/".join(parts[:end]))


def unpack_layer(blob: Path, compression: str, dest: Path, what: str) -> None:
    state = _LayerState()
    try:
        with (
            _open_decompressed(blob, compression) as stream,
            tarfile.open(fileobj=stream, mode="r|") as archive,
        ):
            for member in archive:
                _apply_member(archive, member, dest, state)
    except _UnsafeEntry as exc:
        raise InvalidError(f"refusing to unpack {what}: {exc}") from exc
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zstandard.ZstdError) as exc:
        raise InvalidError(f"{what} is not a valid {compression} tar archive: {exc}") from exc
    # Directory times last: creating entries in a directory moves its modification time.
    for path, member in reversed(state.directories):
        if path.is_dir() and not path.is_symlink():
            _set_attributes(path, member)


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
    archive: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, state: _LayerState
) -> None:
    relative = _member_path(member.name)
    if not relative:
        return  # the layer's root entry: `dest` keeps the attributes its owner gave it
    parent, _, base = relative.rpartition("/")
    if _is_aufs_metadata(relative):
        return
    if base.startswith(_WHITEOUT_PREFIX):
        _apply_whiteout(dest, parent, base, state)
        return
    if member.ischr() or member.isblk() or member.isfifo():
        return  # device nodes and fifos: the runtime provides /dev
    if not (member.isdir() or member.isreg() or member.issym() or member.islnk()):
        return
    _walk_parents(dest, parent, create=True)
    target = dest / relative
    if member.isdir():
        _make_directory(target)
        state.directories.append((target, member))
    elif member.islnk():
        _make_hardlink(dest, member.linkname, target)
    else:
        _remove_existing(target)  # replace what is there; never write through a link
        if member.isreg():
            _write_file(archive, member, target)
        else:
            os.symlink(member.linkname, target)  # any target, absolute ones too: nothing follows it
        _set_attributes(target, member)
    state.record(relative)


def _is_aufs_metadata(relative: str) -> bool:
    return any(
        part.startswith(_AUFS_META_PREFIX) and part != _OPAQUE_WHITEOUT
        for part in relative.split("/")
    )


def _member_path(name: str) -> str:
    """The entry's path relative to the image root; names that could leave it are refused."""
    if name.startswith("/"):
        raise _UnsafeEntry(f"entry {name!r} has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _UnsafeEntry(f"entry {name!r} has a '..' in its path")
    return "/".join(parts)


def _walk_parents(dest: Path, parent: str, *, create: bool) -> bool:
    """Whether the directories of `parent` exist, all real directories (a symlink is refused).

    Layers are diffs of file systems, so their paths never lead through symlinks; one that does
    could, with an absolute link target, write into the host's own directories.
    """
    current = dest
    for part in parent.split("/") if parent else []:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            if not create:
                return False
            os.mkdir(current, 0o755)
            continue
        if stat.S_ISLNK(mode):
            raise _UnsafeEntry(f"path {parent!r} leads through the symlink {part!r}")
        if not stat.S_ISDIR(mode):
            raise _UnsafeEntry(f"path {parent!r} leads through {part!r}, which is not a directory")
    return True


def _remove_existing(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _make_directory(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        os.mkdir(path, 0o755)
        return
    if not stat.S_ISDIR(mode):
        os.unlink(path)  # a symlink or file gives way to the directory; its contents never follow
        os.mkdir(path, 0o755)


def _write_file(archive: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> None:
    # O_EXCL|O_NOFOLLOW: the path was just cleared, so anything there now is not ours to follow.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    source = archive.extractfile(member)
    assert source is not None  # a regular file always has contents, empty or not
    with source, os.fdopen(os.open(path, flags, 0o600), "wb") as out:
        shutil.copyfileobj(source, out, _CHUNK)


def _make_hardlink(dest: Path, linkname: str, target: Path) -> None:
    source_relative = _member_path(linkname)
    source_parent = source_relative.rpartition("/")[0]
    source = dest / source_relative
    if not source_relative or not _walk_parents(dest, source_parent, create=False):
        raise _UnsafeEntry(
            f"hard link {target.name!r} points to {linkname!r}, which does not exist"
        )
    try:
        source_mode = os.lstat(source).st_mode
    except FileNotFoundError:
        raise _UnsafeEntry(f"hard link points to {linkname!r}, which does not exist") from None
    if stat.S_ISDIR(source_mode):
        raise _UnsafeEntry(f"hard link points to the directory {linkname!r}")
    if source == target:
        return
    _remove_existing(target)
    # follow_symlinks=False: a link to a symlink links the symlink itself, never what it names.
    # The new name shares the inode, so the attributes set on the source already apply.
    os.link(source, target, follow_symlinks=False)


def _set_attributes(path: Path, member: tarfile.TarInfo) -> None:
    if os.geteuid() == 0:
        # Numeric ids: names would be looked up in the host's /etc/passwd, not the image's.
        os.lchown(path, member.uid, member.gid)
    if not member.issym():
        os.chmod(path, member.mode & 0o7777)  # after chown, which clears set-user-id bits
    _set_xattrs(path, member)  # after chown too, which clears file capabilities
    os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


def _set_xattrs(path: Path, member: tarfile.TarInfo) -> None:
    """Extended attributes, chiefly file capabilities (`ping` needs cap_net_raw)."""
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            # Best effort, like Docker: some file systems or attribute namespaces refuse them.
            with contextlib.suppress(OSError):
                os.setxattr(
                    path,
                    key.removeprefix("SCHILY.xattr."),
                    value.encode("utf-8", "surrogateescape"),
                    follow_symlinks=False,
                )


def _apply_whiteout(dest: Path, parent: str, base: str, state: _LayerState) -> None:
    if not _walk_parents(dest, parent, create=False):
        return  # nothing below a directory that does not exist to hide
    if base == _OPAQUE_WHITEOUT:
        _clear_lower_entries(dest, parent, state.kept)
        return
    hidden = base.removeprefix(_WHITEOUT_PREFIX)
    if hidden in ("", ".", ".."):
        # `.wh...` would name the directory above, which for the root is outside the image.
        raise _UnsafeEntry(f"whiteout {base!r} in {parent or '/'!r} names no entry of its own")
    relative = f"{parent}/{hidden}" if parent else hidden
    if relative not in state.kept:
        _remove_existing(dest / relative)


def _clear_lower_entries(dest: Path, relative_dir: str, kept: set[str]) -> None:
    """Empty a directory of what lower layers put there, keeping what this layer wrote."""
    directory = dest / relative_dir if relative_dir else dest
    with os.scandir(directory) as entries:
        children = list(entries)
    for entry in children:
        relative = f"{relative_dir}/{entry.name}" if relative_dir else entry.name
        if relative not in kept:
            _remove_existing(Path(entry.path))
        elif entry.is_dir(follow_symlinks=False):
            _clear_lower_entries(dest, relative, kept)
