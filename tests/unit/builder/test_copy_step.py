"""The `copy` step: the SDK's tar of local files unpacked through a mount of the parent image.

The mount is a host path, so the parent image's symlinks are the host's to follow there. These
tests give `_copy` a parent image holding such links and check that every file lands inside the
image, where a container would see it, and that a folder `outside` beside it is never touched.
Most stand a plain copy of the parent's tree in for the overlay mount (what the mount point looks
like from the host); one, as root, mounts the real overlay.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from ember.builder import build
from ember.errors import ExecutionError, InvalidError
from ember.imagefs.client import PreparedImage
from ember.imagefs.manifest import ImageConfig

MTIME = 1_600_000_000


def local_files(files: dict[str, bytes], mode: int = 0o644) -> bytes:
    """A tar as the SDK sends it: regular files, relative names, owned by root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, MTIME
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def archive_of(*members: tarfile.TarInfo) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for member in members:
            archive.addfile(member, io.BytesIO(b"x" * member.size) if member.size else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


@dataclass
class Parent:
    """A parent image's tree (`lower`) and a folder `outside` beside it, with a `secret`.

    The mount point is five folders below the test's folder and `outside` is `../../../outside`
    from it, so that whatever a broken resolution reaches with `..` is still the test's own.
    """

    base: Path
    lower: Path
    outside: Path
    scratch: Path

    @property
    def mounted(self) -> Path:
        """Where `_copy` mounts the image, and where its files land with the stand-in mount."""
        return self.scratch / "root"

    def copy(self, data: bytes, target: str, upper: Path | None = None) -> None:
        prepared = PreparedImage(self.lower, (), ImageConfig(), False, 0.0, "test")
        upper = upper or self.base / "upper"
        upper.mkdir(exist_ok=True)
        self.scratch.mkdir(exist_ok=True)
        build._copy(prepared, upper, self.scratch, data, target)

    def outside_untouched(self) -> bool:
        return sorted(os.listdir(self.outside)) == ["secret"] and (
            (self.outside / "secret").read_text() == "host file"
        )

    def inside(self, path: str) -> Path:
        """An image path, as it lies below the mount."""
        return self.mounted / path.lstrip("/")


def make_parent(tmp_path: Path) -> Parent:
    deep = tmp_path / "a/b"
    (deep / "c").mkdir(parents=True)
    lower = tmp_path / "lower"
    lower.mkdir()
    outside = deep / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host file")
    return Parent(tmp_path, lower, outside, deep / "c/scratch")


@pytest.fixture
def parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Parent:
    def mount_copy(lower: Path, upper: Path, work: Path, target: Path, **_: object) -> None:
        shutil.copytree(lower, target, symlinks=True, dirs_exist_ok=True)

    monkeypatch.setattr(build.overlay, "mount_overlay", mount_copy)
    monkeypatch.setattr(build.overlay, "unmount", lambda target: None)
    return make_parent(tmp_path)


@pytest.mark.parametrize(
    ("links", "target", "lands_at"),
    [
        # An image with `/srv -> /etc`: on the host, the link leads to the host's folder.
        ({"srv": "OUTSIDE"}, "/srv", "OUTSIDE/x"),
        ({"srv": "../../../outside"}, "/srv", "outside/x"),  # `..` stops at the image's root
        ({"srv": "../../.."}, "/srv", "x"),
        ({"srv": "../../../.."}, "/srv", "x"),
        ({"var/run": "/run"}, "/var/run", "run/x"),  # as Debian has it
        ({"app": "/srv/app"}, "/app", "srv/app/x"),  # a dangling link: made inside the image
        ({"a": "b", "b": "OUTSIDE"}, "/a", "OUTSIDE/x"),  # a chain of links
    ],
)
def test_the_parent_images_symlinks_lead_inside_the_image(
    parent: Parent, links: dict[str, str], target: str, lands_at: str
) -> None:
    for name, to in links.items():
        path = parent.lower / name
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(to.replace("OUTSIDE", str(parent.outside)), path)

    parent.copy(local_files({"x": b"copied"}), target)

    lands_at = lands_at.replace("OUTSIDE", str(parent.outside).lstrip("/"))
    assert parent.inside(lands_at).read_bytes() == b"copied"
    assert parent.outside_untouched()
    assert not [p for p in parent.base.rglob("x") if not p.is_relative_to(parent.mounted)]


def test_a_symlink_below_the_target_leads_inside_the_image(parent: Parent) -> None:
    (parent.lower / "data").mkdir()
    os.symlink(parent.outside, parent.lower / "data/lib")
    parent.copy(local_files({"lib/x": b"copied", "top": b"t"}), "/data")
    assert parent.inside(f"{parent.outside}/x").read_bytes() == b"copied"
    assert parent.inside("/data/top").read_bytes() == b"t"
    assert parent.outside_untouched()


def test_a_file_replaces_a_symlink_instead_of_writing_through_it(parent: Parent) -> None:
    (parent.lower / "app").mkdir()
    os.symlink(parent.outside / "secret", parent.lower / "app/config")
    parent.copy(local_files({"config": b"mine"}), "/app")
    assert not parent.inside("/app/config").is_symlink()
    assert parent.inside("/app/config").read_bytes() == b"mine"
    assert parent.outside_untouched()


def test_dot_dots_in_the_target_stop_at_the_image_root(parent: Parent) -> None:
    parent.copy(local_files({"x": b"copied"}), "/../../../../x")
    assert parent.inside("/x/x").read_bytes() == b"copied"
    assert sorted(parent.base.rglob("x")) == [parent.inside("/x"), parent.inside("/x/x")]


def test_an_empty_archive_still_makes_the_target_folder(parent: Parent) -> None:
    os.symlink("/srv", parent.lower / "app")
    parent.copy(local_files({}), "/app/empty")
    assert parent.inside("/srv/empty").is_dir()


def test_modes_and_times_are_kept(parent: Parent) -> None:
    parent.copy(local_files({"bin/tool": b"#!/bin/sh\n"}, mode=0o4755), "/opt")
    st = os.lstat(parent.inside("/opt/bin/tool"))
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert st.st_mtime == MTIME


def test_a_symlink_loop_in_the_image_is_a_clear_error(parent: Parent) -> None:
    os.symlink("b", parent.lower / "a")
    os.symlink("a", parent.lower / "b")
    with pytest.raises(InvalidError, match=r"to /a in the image: .*too many symlinks"):
        parent.copy(local_files({"x": b"copied"}), "/a")
    assert parent.outside_untouched()


def test_a_file_where_a_folder_is_needed_is_a_clear_error(parent: Parent) -> None:
    (parent.lower / "etc").mkdir()
    (parent.lower / "etc/hostname").write_text("image")
    with pytest.raises(
        InvalidError, match=r"cannot copy 'hostname/x' to /etc in the image: .*not a directory"
    ):
        parent.copy(local_files({"hostname/x": b"copied"}), "/etc")


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (member("link", tarfile.SYMTYPE, "/etc/passwd"), "is not a regular file"),
        (member("hard", tarfile.LNKTYPE, "../../../outside/secret"), "is not a regular file"),
        (member("dir", tarfile.DIRTYPE), "is not a regular file"),
        (member("fifo", tarfile.FIFOTYPE), "is not a regular file"),
        (member("../../../outside/evil"), "'\\.\\.' in its path"),
        (member("/abs-evil"), "absolute path"),
        (member("."), "names no file"),
    ],
)
def test_entries_the_sdk_never_sends_are_refused(
    parent: Parent, bad: tarfile.TarInfo, why: str
) -> None:
    with pytest.raises(InvalidError, match=f"unsafe entry: {re.escape(repr(bad.name))} .*{why}"):
        parent.copy(archive_of(bad), "/app")
    assert parent.outside_untouched()
    assert not Path("/abs-evil").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting an overlay needs root")
def test_through_a_real_overlay_a_link_to_a_host_folder_stays_in_the_image(
    tmp_path: Path,
) -> None:
    parent = make_parent(tmp_path)
    os.symlink(parent.outside, parent.lower / "srv")  # as `/srv -> /etc` would be
    upper = tmp_path / "upper"
    try:
        parent.copy(local_files({"x": b"copied"}), "/srv", upper)
    except ExecutionError as exc:
        if "mounting overlay" in str(exc):
            pytest.skip(f"no overlay mount here: {exc}")
        raise
    assert parent.outside_untouched()
    assert (upper / str(parent.outside).lstrip("/") / "x").read_bytes() == b"copied"
    assert os.readlink(parent.lower / "srv") == str(parent.outside)
