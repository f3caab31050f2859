"""The content index: the manifest's content, without paths, in a form read in milliseconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ember.imagefs import index
from ember.imagefs.content import CHUNK_SIZE, CorruptChunkError
from ember.imagefs.index import ContentIndex
from ember.imagefs.manifest import ImageConfig, Manifest
from ember.imagefs.pack import pack_tree
from ember.imagefs.store import LocalChunkStore


@pytest.fixture
def built(tmp_path: Path) -> Manifest:
    tree = tmp_path / "tree"
    (tree / "lib").mkdir(parents=True)
    for i in range(30):
        (tree / f"lib/small{i}.py").write_text(f"x = {i}\n" * (i * 40 + 1))
    (tree / "lib/again.py").write_text("x = 3\n" * 121)  # the content of small3.py
    (tree / "lib/empty").write_bytes(b"")
    (tree / "lib/link").symlink_to("small1.py")
    (tree / "lib/big.so").write_bytes(os.urandom(3 * CHUNK_SIZE + 100))
    image, _ = pack_tree(tree, LocalChunkStore(tmp_path / "store"))
    config = ImageConfig(env={"A": "1"}, workdir="/work", python="/usr/bin/python3")
    return Manifest(image.entries, config)


def test_the_index_says_what_the_manifest_says_of_every_file_and_chunk(built) -> None:
    loaded = ContentIndex.from_bytes(ContentIndex.from_manifest(built).to_bytes())
    assert loaded.config == built.config
    assert set(loaded.chunks) == built.chunks()
    assert sorted(loaded.files) == sorted({e.digest for e in built.files()})
    # Equal content at two paths (again.py, small3.py) is one object: the first path's extents.
    first_of = {}
    for entry in sorted(built.files(), key=lambda e: e.path):
        first_of.setdefault(entry.digest, entry)
    assert len(first_of) == sum(1 for _ in built.files()) - 1
    expected_refs: dict[str, set[tuple[str, int]]] = {}
    for entry in first_of.values():
        found = loaded.file(entry.digest)
        assert found is not None
        assert (found.size, found.extents) == (entry.size, entry.extents)
        lengths = [extent.length for extent in entry.extents]
        assert found.starts == tuple(sum(lengths[:n]) for n in range(len(lengths)))
        for number, extent in enumerate(entry.extents):
            expected_refs.setdefault(extent.chunk, set()).add((entry.digest, number))
    for chunk, expected in expected_refs.items():
        assert loaded.has_chunk(chunk)
        assert {(ref.file.digest, ref.extent) for ref in loaded.refs(chunk)} == expected
    assert loaded.file("00" * 32) is None
    assert loaded.refs("00" * 32) == [] and not loaded.has_chunk("00" * 32)
    big = loaded.file(built.entries["lib/big.so"].digest)
    assert big is not None and len(big.extents) == 4 and big.starts[-1] == 3 * CHUNK_SIZE


def test_a_damaged_index_is_refused(built) -> None:
    data = ContentIndex.from_manifest(built).to_bytes()
    flipped = bytearray(data)
    flipped[-5] ^= 1
    with pytest.raises(CorruptChunkError, match="digest does not match"):
        ContentIndex.from_bytes(bytes(flipped))
    with pytest.raises(CorruptChunkError, match="no header"):
        ContentIndex.from_bytes(data[:10])
    with pytest.raises(CorruptChunkError):
        index.from_stored(b"not zstd at all")
    with pytest.raises(CorruptChunkError, match="format 2"):
        ContentIndex.from_bytes(data.replace(b'"format": 1', b'"format": 2', 1))
