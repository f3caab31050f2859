import importlib.util
import sys
from pathlib import Path

from ember.worker.package import SOURCE, compiled_package


def test_the_copy_holds_every_module_with_its_bytecode(tmp_path: Path) -> None:
    package = compiled_package(tmp_path)
    harness = package / "harness" / "runtime.py"
    assert harness.read_bytes() == (SOURCE / "harness" / "runtime.py").read_bytes()
    tag = sys.implementation.cache_tag
    pyc = (package / "harness" / "__pycache__" / f"runtime.{tag}.pyc").read_bytes()
    # The header (PEP 552): magic, a 4-byte little-endian flags word, then for a hash-based pyc
    # the source's 8-byte hash. Flags 0b01: hash-based, unchecked (the interpreter trusts the
    # pyc without reading the source); 0b11 would be checked, 0 timestamp-based.
    assert pyc[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(pyc[4:8], "little") == 0b01
    assert pyc[8:16] == importlib.util.source_hash(harness.read_bytes())


def test_the_copy_is_made_once_and_other_versions_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / "0123456789abcdef" / "ember"
    stale.mkdir(parents=True)
    first = compiled_package(tmp_path)
    marker = first / "marker"
    marker.write_text("kept")
    assert compiled_package(tmp_path) == first
    assert marker.exists()
    assert not stale.exists()
