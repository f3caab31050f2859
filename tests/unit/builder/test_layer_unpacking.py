"""Unpacking registry layers: hostile tarballs, built here with `tarfile`, stay inside the tree.

Each layer goes straight to `unpack_layer`, one after another onto the same directory, as a pull
applies them. Every test keeps a folder `outside` beside the image root, with a file `secret`
in it, and checks that nothing there was written, removed, linked or changed. Symlinks that a
broken unpacker would follow point into `outside`, never at the host's own directories.
"""

from __future__ import annotations

import logging
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from ember.builder.registry.layers import unpack_layer
from ember.errors import InvalidError
from tests.registry_support import MTIME, file, tar_bytes
from tests.registry_support import Entry as Member
from tests.registry_support import hardlink as hard
from tests.registry_support import symlink as link


def reg(name: str, data: bytes = b"data", **kw: object) -> Member:
    return file(name, data, **kw)


def folder(name: str, mode: int = 0o755, **kw: object) -> Member:
    return Member(name, tarfile.DIRTYPE, mode=mode, **kw)  # type: ignore[arg-type]


def layer_file(path: Path, members: list[Member]) -> Path:
    path.write_bytes(tar_bytes(members))
    return path


@dataclass
class Tree:
    """An image root with a folder `outside` beside it, which no layer may touch."""

    base: Path
    root: Path
    outside: Path
    layers: int = 0

    def apply(self, *members: Member) -> None:
        self.layers += 1
        blob = layer_file(self.base / f"layer{self.layers}.tar", list(members))
        unpack_layer(blob, "none", self.root, f"layer {self.layers}")

    def snapshot(self) -> dict[str, tuple[int, int, int, int, bytes]]:
        """Every entry of `outside`: type and mode, owner, time, and content or link target."""
        found = {}
        for directory, dirs, files in os.walk(self.outside):
            for name in ["", *dirs, *files]:
                path = Path(directory, name)
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode):
                    body = path.read_bytes()
                elif stat.S_ISLNK(st.st_mode):
                    body = os.readlink(path).encode()
                else:
                    body = b""
                key = str(path.relative_to(self.outside))
                found[key] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, body)
        return found


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    # The root sits three folders down, so that `../../..` from it is still this test's folder.
    root = tmp_path / "one/two/root"
    root.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host file")
    (outside / "victim").mkdir(mode=0o700)
    os.chmod(outside / "victim", 0o700)
    return Tree(tmp_path, root, outside)


def refused(tree: Tree, *layers: list[Member], match: str) -> None:
    """The last layer is refused with `match` in the message; `outside` is as it was."""
    before = tree.snapshot()
    for members in layers[:-1]:
        tree.apply(*members)
    with pytest.raises(InvalidError, match=match):
        tree.apply(*layers[-1])
    assert tree.snapshot() == before


# --- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../evil", "'\\.\\.' in its path"),
        ("a/../../evil", "'\\.\\.' in its path"),
        ("./../outside/secret", "'\\.\\.' in its path"),
        ("/abs-evil", "absolute path"),
        ("//abs-evil", "absolute path"),
    ],
)
def test_names_that_leave_the_root_are_refused(tree: Tree, name: str, why: str) -> None:
    refused(tree, [folder("a"), reg(name)], match=f"refusing to unpack layer 1: entry .*{why}")
    assert not (tree.base / "one/two/evil").exists()
    assert not Path("/abs-evil").exists()


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (reg("x" * 256), "name longer than 255 bytes"),
        (reg("/".join(["d" * 200] * 21)), "longer than the host's limit of 4096 bytes"),
        # A NUL ends a name in a tar header, so only a pax record can carry one.
        (reg("a", pax={"path": "a\0b"}), "NUL byte"),
        (Member("l", tarfile.SYMTYPE, pax={"linkpath": "a\0b"}), "no file system can store"),
        (link("l", "x" * 4096), "no file system can store"),
        (reg("big-owner", uid=2**40), "owner id 1099511627776"),
        (reg("big-group", gid=2**32 - 1), "group id 4294967295"),
    ],
)
def test_names_and_values_no_file_system_can_hold_are_refused(
    tree: Tree, member: Member, why: str
) -> None:
    refused(tree, [member], match=why)


def test_odd_but_valid_names_and_times_are_kept(tree: Tree) -> None:
    odd = "caf\udce9 \\ tab\there .wh-not-a-whiteout"  # a byte that is not UTF-8, as tar keeps it
    tree.apply(
        reg(odd, b"odd"),
        reg("x" * 255, b"long"),
        reg("far-future", b"t", pax={"mtime": "1e30"}),  # out of range: keeps today's time
    )
    assert (tree.root / odd).read_bytes() == b"odd"
    assert os.fsencode(odd) in os.listdir(os.fsencode(tree.root))
    assert (tree.root / ("x" * 255)).read_bytes() == b"long"
    assert (tree.root / "far-future").read_bytes() == b"t"


# --- symlinks planted by earlier members and layers ----------------------------------------------


def planted(tree: Tree) -> dict[str, list[Member]]:
    """A lower layer that plants the link `etc`, to `outside` or to the test's own folder."""
    return {
        "absolute": [link("etc", str(tree.outside))],
        "relative": [link("etc", "../../../outside")],
        "dot-dots": [link("etc", "../../..")],  # the test's folder, which holds `outside`
        "chained": [link("hop", str(tree.outside)), link("etc", "hop")],
        "nested": [folder("usr"), link("usr/etc", "../../../../outside"), link("etc", "usr/etc")],
    }


THROUGH = {
    "file": reg("etc/secret", b"overwritten"),
    "new file": reg("etc/passwd", b"root::0:0::/:/bin/sh"),
    "directory": folder("etc/victim", mode=0o777),
    "symlink": link("etc/planted", "/"),
    "hard link": hard("etc/secret-link", "secret"),
}


@pytest.mark.parametrize("how", ["absolute", "relative", "dot-dots", "chained", "nested"])
@pytest.mark.parametrize("what", list(THROUGH))
def test_a_lower_layers_symlink_is_never_followed(tree: Tree, how: str, what: str) -> None:
    refused(tree, planted(tree)[how], [THROUGH[what]], match="leads through the symlink 'etc'")
    assert os.path.islink(tree.root / "etc")
    written = THROUGH[what].name.removeprefix("etc/")
    assert not os.path.lexists(tree.base / written), "written through `etc -> ../../..`"


@pytest.mark.parametrize("what", list(THROUGH))
def test_a_symlink_planted_earlier_in_the_same_layer_is_never_followed(
    tree: Tree, what: str
) -> None:
    refused(
        tree,
        [link("etc", str(tree.outside)), THROUGH[what]],
        match="entry 'etc/.*' leads through the symlink 'etc'",
    )


def test_symlinks_to_anywhere_are_made_as_they_are(tree: Tree) -> None:
    before = tree.snapshot()
    tree.apply(
        link("abs", "/etc/passwd"),
        link("up", "../../../../../../.."),
        link("out", str(tree.outside / "secret")),
        link("dangling", "no/such/file"),
    )
    assert os.readlink(tree.root / "abs") == "/etc/passwd"
    assert os.readlink(tree.root / "up") == "../../../../../../.."
    assert os.readlink(tree.root / "out") == str(tree.outside / "secret")
    assert os.readlink(tree.root / "dangling") == "no/such/file"
    assert os.lstat(tree.root / "out").st_mtime == MTIME  # the link's own time, not its target's
    assert tree.snapshot() == before


def test_an_entry_replaces_a_symlink_instead_of_writing_through_it(tree: Tree) -> None:
    tree.apply(link("file", str(tree.outside / "secret")), link("dir", str(tree.outside)))
    before = tree.snapshot()
    tree.apply(reg("file", b"image file", mode=0o600), folder("dir", mode=0o777))
    assert (tree.root / "file").read_bytes() == b"image file"
    assert not os.path.islink(tree.root / "file")
    assert stat.S_ISDIR(os.lstat(tree.root / "dir").st_mode)
    assert os.listdir(tree.root / "dir") == []
    assert tree.snapshot() == before


def test_a_directorys_attributes_never_reach_through_a_later_symlink(tree: Tree) -> None:
    # Directory attributes are set after the whole layer: by then `x` is a link to `outside`,
    # which holds a `victim` folder, so a path-based chmod would change the host's folder.
    before = tree.snapshot()
    tree.apply(
        folder("x"),
        folder("x/victim", mode=0o6777, uid=1234, gid=1234),
        link("x", str(tree.outside)),
    )
    assert tree.snapshot() == before
    assert os.readlink(tree.root / "x") == str(tree.outside)


# --- hard links ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("../../../outside/secret", "'\\.\\.' in its path"),
        ("SECRET_ABSOLUTE", "absolute path"),
        ("etc/secret", "leads through the symlink 'etc'"),
        ("no-such-file", "does not exist"),
        ("no/such/dir/file", "does not exist"),
        ("dir", "is a directory"),
        ("", "is not an entry"),
    ],
)
def test_hard_links_only_reach_entries_inside_the_tree(tree: Tree, target: str, why: str) -> None:
    target = target.replace("SECRET_ABSOLUTE", str(tree.outside / "secret"))
    lower = [link("etc", str(tree.outside)), folder("dir")]
    refused(tree, lower, [hard("stolen", target)], match=f"'stolen' is a hard link to .*{why}")
    assert not (tree.root / "stolen").exists()
    assert os.stat(tree.outside / "secret").st_nlink == 1


def test_a_hard_link_to_a_symlink_links_the_symlink_itself(tree: Tree) -> None:
    tree.apply(link("out", str(tree.outside / "secret")), reg("real", b"r"))
    tree.apply(hard("alias", "out"), hard("twin", "real"))
    assert os.lstat(tree.root / "alias").st_ino == os.lstat(tree.root / "out").st_ino
    assert os.readlink(tree.root / "alias") == str(tree.outside / "secret")
    assert os.stat(tree.outside / "secret").st_nlink == 1
    assert os.stat(tree.root / "twin").st_ino == os.stat(tree.root / "real").st_ino


# --- devices and fifos ---------------------------------------------------------------------------


def test_devices_and_fifos_are_skipped_with_a_note(
    tree: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ember.builder.registry.layers")
    tree.apply(
        folder("dev"),
        Member("dev/sda", tarfile.BLKTYPE, mode=0o660),
        Member("dev/mem", tarfile.CHRTYPE, mode=0o666),
        Member("run/fifo", tarfile.FIFOTYPE, mode=0o644),
        reg("dev/kept", b"a file beside them"),
    )
    assert sorted(os.listdir(tree.root / "dev")) == ["kept"]
    assert not (tree.root / "run").exists()
    note = " ".join(record.getMessage() for record in caplog.records)
    assert "layer 1: skipped 3 device nodes and fifos" in note
    assert "'dev/sda'" in note and "'dev/mem'" in note and "'run/fifo'" in note


# --- whiteouts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("whiteout", "why"),
    [
        ("etc/.wh.secret", "leads through the symlink 'etc'"),
        ("etc/.wh..wh..opq", "leads through the symlink 'etc'"),
        ("etc/victim/.wh.x", "leads through the symlink 'etc'"),
        (".wh...", "names no entry of its own"),
        (".wh..", "names no entry of its own"),
        (".wh.", "names no entry of its own"),
        ("dir/.wh...", "names no entry of its own"),
    ],
)
def test_whiteouts_never_reach_outside_the_tree(tree: Tree, whiteout: str, why: str) -> None:
    lower = [link("etc", str(tree.outside)), folder("dir"), reg("dir/kept")]
    refused(tree, lower, [reg(whiteout, b"")], match=why)
    assert (tree.root / "dir/kept").exists()
    assert (tree.base / "one/two").is_dir()


def test_whiteouts_remove_symlinks_not_what_they_name(tree: Tree) -> None:
    tree.apply(
        link("etc", str(tree.outside)),
        folder("opt"),
        link("opt/data", str(tree.outside)),
        link("opt/file", str(tree.outside / "secret")),
    )
    before = tree.snapshot()
    tree.apply(reg(".wh.etc", b""), reg("opt/.wh..wh..opq", b""), reg("opt/new", b"n"))
    assert not os.path.lexists(tree.root / "etc")
    assert sorted(os.listdir(tree.root / "opt")) == ["new"]
    assert tree.snapshot() == before


def test_a_whiteout_below_a_missing_directory_does_nothing(tree: Tree) -> None:
    tree.apply(reg("a/.wh.b", b""), reg("c/.wh..wh..opq", b""))
    assert sorted(os.listdir(tree.root)) == []


# --- modes and owners ----------------------------------------------------------------------------


def test_setuid_setgid_and_owners_are_kept_inside_the_tree(tree: Tree) -> None:
    before = tree.snapshot()
    tree.apply(
        folder("usr/bin", mode=0o2775, uid=0, gid=50),
        reg("usr/bin/su", b"\x7fELF", mode=0o4755, uid=0, gid=0),
        reg("usr/bin/wall", b"\x7fELF", mode=0o2755, uid=0, gid=5),
        reg("home/user/file", b"mine", mode=0o600, uid=1000, gid=1000),
    )
    assert stat.S_IMODE(os.lstat(tree.root / "usr/bin/su").st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(tree.root / "usr/bin/wall").st_mode) == 0o2755
    assert stat.S_IMODE(os.lstat(tree.root / "usr/bin").st_mode) == 0o2775
    if os.geteuid() == 0:
        assert os.lstat(tree.root / "usr/bin/wall").st_gid == 5
        assert os.lstat(tree.root / "usr/bin").st_gid == 50
        home = os.lstat(tree.root / "home/user/file")
        assert (home.st_uid, home.st_gid) == (1000, 1000)
    assert tree.snapshot() == before


@pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* attributes need root")
def test_overlays_own_attributes_are_not_taken_from_a_layer(tree: Tree) -> None:
    tree.apply(
        reg(
            "file",
            b"x",
            pax={
                "SCHILY.xattr.trusted.overlay.redirect": "/elsewhere",
                "SCHILY.xattr.trusted.ember": "kept",
            },
        )
    )
    names = os.listxattr(tree.root / "file")
    if "trusted.ember" not in names:
        pytest.skip("this file system keeps no trusted.* attributes")
    assert "trusted.overlay.redirect" not in names
