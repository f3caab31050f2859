"""The app's source: the entry file and the local modules it imported, as a reproducible tar."""

import importlib.util
import io
import os
import sys
import tarfile
from pathlib import Path

import pytest

from ember.sdk.source import local_files, source_archive, source_root


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """proj/app.py imported helper, pkg and an installed package; proj/unused.py it did not."""
    root = tmp_path / "proj"
    site = root / ".venv" / "lib" / "python3.11" / "site-packages"
    files = {
        root / "app.py": "import helper\n",
        root / "helper.py": "VALUE = 1\n",
        root / "unused.py": "",
        root / "notes.txt": "not python\n",
        root / "pkg" / "__init__.py": "",
        root / "pkg" / "sub.py": "",
        site / "installed.py": "",
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for name, path in {
        "ember_test_helper": root / "helper.py",
        "ember_test_pkg": root / "pkg" / "__init__.py",
        "ember_test_installed": site / "installed.py",
    }.items():
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None
        monkeypatch.setitem(sys.modules, name, importlib.util.module_from_spec(spec))
    return root


def test_local_files_are_the_entry_and_the_local_modules_it_imported(project: Path) -> None:
    files = local_files(project / "app.py", project)
    assert [f.relative_to(project).as_posix() for f in files] == [
        "app.py",
        "helper.py",
        "pkg/__init__.py",
        "pkg/sub.py",
    ]


def test_archive_holds_the_files_under_their_relative_paths(project: Path) -> None:
    data = source_archive(project / "app.py", "app")
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = {m.name: m for m in archive.getmembers()}
        helper = archive.extractfile(members["helper.py"])
        assert helper is not None and helper.read() == b"VALUE = 1\n"
    assert sorted(members) == ["app.py", "helper.py", "pkg/__init__.py", "pkg/sub.py"]
    assert {(m.mode, m.mtime, m.uid) for m in members.values()} == {(0o644, 0, 0)}


def test_archive_is_byte_identical_when_built_again(project: Path) -> None:
    first = source_archive(project / "app.py", "app")
    os.utime(project / "helper.py", (1_700_000_000, 1_700_000_000))
    assert source_archive(project / "app.py", "app") == first


def test_archive_changes_when_a_file_changes(project: Path) -> None:
    first = source_archive(project / "app.py", "app")
    (project / "helper.py").write_text("VALUE = 2\n")
    assert source_archive(project / "app.py", "app") != first


def test_source_root_is_where_the_module_name_starts() -> None:
    assert source_root(Path("/src/app.py"), "app") == Path("/src")
    assert source_root(Path("/src/a/b/c.py"), "a.b.c") == Path("/src")
