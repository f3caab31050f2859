import importlib.util
import sys
from pathlib import Path

from ember.worker.package import SOURCE, compiled_package


def test_the_copy_holds_every_module_with_its_bytecode(tmp_path: Path) -> None:
    package = compiled_package(tmp_path)
    harness = package / "harness" / "runtime.py"
    assert harness.read_bytes() == (SOURCE / "harness" / "runtime.py").read_bytes()
    tag = sys.implementation.cache_tag
    assert (package / "harness" / "__pycache__" / f"runtime.{tag}.pyc").is_file()
    assert importlib.util.source_hash(harness.read_bytes())  # hash-based pycs: no mtime checks


def test_the_copy_is_made_once_and_other_versions_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / "0123456789abcdef" / "ember"
    stale.mkdir(parents=True)
    first = compiled_package(tmp_path)
    marker = first / "marker"
    marker.write_text("kept")
    assert compiled_package(tmp_path) == first
    assert marker.exists()
    assert not stale.exists()
