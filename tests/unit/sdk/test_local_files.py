"""Local files on their way into an image: what the tar the SDK uploads may carry.

The worker takes only regular files, so a symlink in a local folder is sent as the file it
names, and only when that lies inside the folder the user named; a link to anything outside is
refused, so that a link in a project (to ~/.ssh, to /etc) never carries a file the user did not
put there. Dockerfile COPY sources must lie inside the build context, by name and through links.
Each step goes through the SDK's real `_step_proto`, with only the upload replaced.
"""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import ember
from ember.client import blobs
from ember.sdk.image import _step_proto


@dataclass(frozen=True)
class Sent:
    """One member of an uploaded tar."""

    type: bytes
    mode: int
    owner: tuple[int, int, str, str]
    data: bytes


def uploaded(image: ember.Image, monkeypatch: pytest.MonkeyPatch) -> dict[str, Sent]:
    """The members of the tar the image's last step uploads, by name."""
    sent: list[bytes] = []

    async def upload(conn: object, data: bytes) -> str:
        sent.append(data)
        return "blob-1"

    monkeypatch.setattr(blobs, "upload", upload)
    asyncio.run(_step_proto(None, image._steps[-1], True))  # type: ignore[arg-type]
    members = {}
    with tarfile.open(fileobj=io.BytesIO(sent[0])) as archive:
        for member in archive.getmembers():
            source = archive.extractfile(member)
            owner = (member.uid, member.gid, member.uname, member.gname)
            data = source.read() if source else b""
            members[member.name] = Sent(member.type, member.mode, owner, data)
    return members


def refused(image: ember.Image, monkeypatch: pytest.MonkeyPatch, match: str) -> None:
    with pytest.raises(ember.InvalidError, match=match):
        uploaded(image, monkeypatch)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder to add, with a file and a subfolder, beside a folder holding a secret."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/id_rsa").write_text("PRIVATE KEY")
    folder = tmp_path / "project"
    (folder / "models/v2").mkdir(parents=True)
    (folder / "models/v2/weights.bin").write_bytes(b"weights")
    (folder / "app.py").write_text("print('app')\n")
    return folder


def test_symlinks_inside_the_folder_are_sent_as_the_files_they_name(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.symlink("v2/weights.bin", project / "models/latest.bin")
    os.symlink("models/v2", project / "current")  # a folder inside: its files under the link
    os.link(project / "app.py", project / "hard.py")  # one inode, two names
    os.chmod(project / "app.py", 0o4755)

    members = uploaded(ember.Image.debian_slim().add_local_dir(project, "/app"), monkeypatch)

    assert sorted(members) == [
        "app.py",
        "current/weights.bin",
        "hard.py",
        "models/latest.bin",
        "models/v2/weights.bin",
    ]
    assert all(member.type == tarfile.REGTYPE for member in members.values())
    assert members["models/latest.bin"].data == b"weights"
    assert members["current/weights.bin"].data == b"weights"
    assert members["hard.py"].data == b"print('app')\n"
    assert members["app.py"].mode == 0o4755
    assert {member.owner for member in members.values()} == {(0, 0, "", "")}


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("key", "OUTSIDE/id_rsa"),  # absolute, to a file
        ("key", "../outside/id_rsa"),  # relative, to a file
        ("models/keys", "../../outside"),  # to a folder
        ("models/hop", "../../outer/id_rsa"),  # through another link, outside
        ("up", ".."),  # the folder that holds the project
    ],
)
def test_a_symlink_to_anything_outside_the_folder_is_refused(
    project: Path, monkeypatch: pytest.MonkeyPatch, name: str, target: str
) -> None:
    os.symlink("outside", project.parent / "outer")
    os.symlink(target.replace("OUTSIDE", str(project.parent / "outside")), project / name)
    image = ember.Image.debian_slim().add_local_dir(project, "/app")
    refused(
        image,
        monkeypatch,
        match=(
            f"local folder '{project}' holds the symlink '{name}', which points outside it "
            r".*copy what it names into the folder, or leave the link out by adding '.*' to ignore="
        ),
    )


def test_an_ignored_link_is_not_followed(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / ".venv/bin").mkdir(parents=True)
    os.symlink("/usr/bin/python3", project / ".venv/bin/python")
    image = ember.Image.debian_slim().add_local_dir(project, "/app", ignore=[".venv"])
    assert sorted(uploaded(image, monkeypatch)) == ["app.py", "models/v2/weights.bin"]


def test_a_dangling_symlink_names_no_file_and_is_skipped(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.symlink("user@host.1234:1700000000", project / ".#app.py")  # an editor's lock
    os.symlink("/no/such/file", project / "gone")
    image = ember.Image.debian_slim().add_local_dir(project, "/app")
    assert sorted(uploaded(image, monkeypatch)) == ["app.py", "models/v2/weights.bin"]


def test_a_link_to_a_folder_that_holds_it_is_refused(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.symlink("..", project / "models/again")
    image = ember.Image.debian_slim().add_local_dir(project, "/app")
    refused(image, monkeypatch, match="symlink 'models/again', which points to a folder that holds")


def test_a_symlink_the_user_named_is_followed(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.symlink(project / "models/v2/weights.bin", project.parent / "weights-link")
    os.symlink(project, project.parent / "project-link")

    one = ember.Image.debian_slim().add_local_file(project.parent / "weights-link", "/w.bin")
    members = uploaded(one, monkeypatch)
    assert list(members) == ["w.bin"]
    assert members["w.bin"].type == tarfile.REGTYPE
    assert members["w.bin"].data == b"weights"

    folder = ember.Image.debian_slim().add_local_dir(project.parent / "project-link", "/app")
    assert sorted(uploaded(folder, monkeypatch)) == ["app.py", "models/v2/weights.bin"]


# --- Dockerfile COPY sources ---------------------------------------------------------------------


def dockerfile(context: Path, copy: str) -> Path:
    path = context / "Dockerfile"
    path.write_text(f"FROM python:3.11-slim\n{copy}\n")
    return path


@pytest.mark.parametrize(
    ("copy", "why", "fix"),
    [
        ("COPY ../outside/id_rsa /x", "is outside the build context", "move it into the context"),
        ("COPY models/../../outside /x", "is outside the build context", "pass context_dir="),
        ("ADD ../../etc/passwd /x", "is outside the build context", "pass context_dir="),
        ("COPY /etc/passwd /x", "is an absolute path", "write it relative to that folder"),
        ("COPY key /x", "is a symlink \\(or lies below one\\) to", "put the file itself"),
        ("COPY keys/id_rsa /x", "is a symlink \\(or lies below one\\) to", "put the file itself"),
    ],
)
def test_copy_sources_outside_the_build_context_are_refused(
    project: Path, copy: str, why: str, fix: str
) -> None:
    os.symlink(project.parent / "outside/id_rsa", project / "key")
    os.symlink("../outside", project / "keys")
    with pytest.raises(ember.InvalidError, match=f"Dockerfile:2: COPY source .*{why}.*{fix}"):
        ember.Image.from_dockerfile(dockerfile(project, copy))


def test_copy_sources_inside_the_context_may_go_through_links_inside_it(project: Path) -> None:
    os.symlink("models/v2", project / "current")
    image = ember.Image.from_dockerfile(
        dockerfile(project, "COPY current/weights.bin models/../app.py /app/")
    )
    sources = [step.sources for step in image._steps if step.kind == "copy"]
    assert sources == [
        ((project / "models/v2/weights.bin", "weights.bin"),),
        ((project / "app.py", "app.py"),),
    ]
