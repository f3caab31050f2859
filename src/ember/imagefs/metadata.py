"""The metadata layer of an image: an erofs image overlay serves lookups, stat and readdir from.

Every file of the manifest becomes a stub: a sparse file with the real size, mode, owner, mtime
and xattrs, marked `trusted.overlay.metacopy` and redirected (`trusted.overlay.redirect`) to
`/<d[:2]>/<digest>`: the content's object in overlay's data-only layers (the host's object
directory, then the FUSE mount that fetches what the host lacks). The kernel answers every
metadata question from the erofs image; content is looked up only when a file is opened.

The erofs image is made once per image, where it is built (`mkfs.erofs` needs the stub tree on
disk, seconds for a large image), and stored beside the manifest: a host starting the image
fetches one small file and mounts it (microseconds).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ember.errors import ExecutionError
from ember.imagefs.manifest import DIR, FILE, SYMLINK, Entry, Manifest

_METACOPY = "trusted.overlay.metacopy"
_REDIRECT = "trusted.overlay.redirect"


def object_path(file_digest: str) -> str:
    """Where a file's content lives in a data-only layer (an object directory)."""
    return f"{file_digest[:2]}/{file_digest}"


def build_metadata_image(manifest: Manifest, output: Path, scratch: Path) -> None:
    """Write the erofs metadata image of `manifest` to `output`, using `scratch` (removed)."""
    tree = scratch / "tree"
    shutil.rmtree(scratch, ignore_errors=True)
    tree.mkdir(parents=True)
    try:
        _write_stubs(manifest, tree)
        temp = output.with_name(output.name + ".partial")
        # Chunked mode stores the stubs' holes as null chunks: the image stays metadata-sized.
        command = ["mkfs.erofs", "--quiet", "--chunksize=4096", str(temp), str(tree)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, errors="replace")
        except FileNotFoundError:
            raise ExecutionError(
                "mkfs.erofs is not installed; install it (apt-get install erofs-utils)."
            ) from None
        if result.returncode != 0:
            raise ExecutionError(f"mkfs.erofs failed: {result.stdout}{result.stderr}")
        os.replace(temp, output)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _write_stubs(manifest: Manifest, tree: Path) -> None:
    directories = []
    for path in sorted(manifest.entries):  # parents sort before their children
        entry = manifest.entries[path]
        full = os.path.join(tree, path) if path else str(tree)
        if entry.kind == DIR:
            if path:
                os.mkdir(full)
            directories.append(entry)
        elif entry.kind == SYMLINK:
            os.symlink(entry.target, full)
        elif entry.kind == FILE:
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                if entry.size:
                    os.ftruncate(fd, entry.size)
                    os.setxattr(fd, _METACOPY, b"")
                    os.setxattr(fd, _REDIRECT, ("/" + object_path(entry.digest)).encode())
            finally:
                os.close(fd)
        _set_attributes(full, entry)
    # Creating children changed each directory's mtime: set them again, deepest first.
    for entry in reversed(directories):
        full = os.path.join(tree, entry.path) if entry.path else str(tree)
        os.utime(full, ns=(entry.mtime_ns, entry.mtime_ns))


def _set_attributes(full: str, entry: Entry) -> None:
    for name, value in entry.xattrs:
        os.setxattr(full, name, value, follow_symlinks=False)
    os.chown(full, entry.uid, entry.gid, follow_symlinks=False)
    if entry.kind != SYMLINK:
        os.chmod(full, entry.mode)  # after chown, which clears setuid bits
    os.utime(full, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
