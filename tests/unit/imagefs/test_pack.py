"""Trees into manifests: content, metadata, packing, and overlay upper dirs as layers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ember.imagefs import content, manifest
from ember.imagefs.content import CHUNK_SIZE, CorruptChunkError
from ember.imagefs.manifest import DIR, FILE, SYMLINK, ImageConfig, Manifest
from ember.imagefs.pack import PACK_LIMIT, pack_tree
from ember.imagefs.store import LocalChunkStore


def read_file(store: LocalChunkStore, entry: manifest.Entry) -> bytes:
    pieces = []
    for extent in entry.extents:
        chunk = content.open_chunk(extent.chunk, store.get(content.chunk_key(extent.chunk)))
        pieces.append(chunk[extent.offset : extent.offset + extent.length])
    return b"".join(pieces)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "pkg/sub").mkdir(parents=True)
    for i in range(50):
        (root / f"pkg/m{i:02}.py").write_text(f"value = {i}\n" * (i + 1))
    (root / "pkg/sub/big.bin").write_bytes(os.urandom(3 * CHUNK_SIZE + 123))
    (root / "pkg/empty").write_bytes(b"")
    (root / "pkg/tool").write_text("#!/bin/sh\n")
    os.chmod(root / "pkg/tool", 0o4755)
    os.symlink("/pkg/m01.py", root / "link")
    os.symlink("pkg/sub", root / "dirlink")
    os.setxattr(root / "pkg/tool", "user.note", b"kept")
    return root


def test_a_tree_round_trips_through_the_store(tree: Path, tmp_path: Path) -> None:
    store = LocalChunkStore(tmp_path / "store")
    image, stats = pack_tree(tree, store)
    assert stats.files == 52  # 50 modules, the tool and big.bin (empty files carry no content)
    for path in ["pkg/m07.py", "pkg/sub/big.bin", "pkg/tool"]:
        entry = image.entries[path]
        assert read_file(store, entry) == (tree / path).read_bytes()
        assert entry.digest == content.digest((tree / path).read_bytes())
    assert image.entries["pkg/tool"].mode == 0o4755
    assert ("user.note", b"kept") in image.entries["pkg/tool"].xattrs
    assert image.entries["link"].kind == SYMLINK and image.entries["link"].target == "/pkg/m01.py"
    assert image.entries["dirlink"].kind == SYMLINK  # a leaf, not followed
    assert "dirlink/big.bin" not in image.entries
    assert image.entries["pkg/sub"].kind == DIR and image.entries[""].kind == DIR
    assert image.entries["pkg/empty"].kind == FILE and image.entries["pkg/empty"].extents == ()


def test_small_files_share_chunks_and_large_files_split(tree: Path, tmp_path: Path) -> None:
    store = LocalChunkStore(tmp_path / "store")
    image, _ = pack_tree(tree, store)
    modules = [image.entries[f"pkg/m{i:02}.py"] for i in range(50)]
    assert len({m.extents[0].chunk for m in modules}) == 1  # all in one pack
    big = image.entries["pkg/sub/big.bin"]
    assert [e.length for e in big.extents] == [CHUNK_SIZE] * 3 + [123]
    assert all(e.length <= PACK_LIMIT for m in modules for e in m.extents)


def test_the_same_tree_packs_to_the_same_image_and_uploads_nothing(
    tree: Path, tmp_path: Path
) -> None:
    store = LocalChunkStore(tmp_path / "store")
    first, stats = pack_tree(tree, store)
    second, again = pack_tree(tree, store)
    assert first.image_id == second.image_id
    assert stats.chunks_uploaded > 0 and again.chunks_uploaded == 0


def test_an_overlay_upper_dir_applies_as_a_layer(tree: Path, tmp_path: Path) -> None:
    store = LocalChunkStore(tmp_path / "store")
    parent, _ = pack_tree(tree, store)
    upper = tmp_path / "upper"
    (upper / "pkg").mkdir(parents=True)
    (upper / "pkg/m01.py").write_text("changed\n")  # changed
    (upper / "pkg/new.py").write_text("new\n")  # added
    os.mknod(upper / "pkg/m02.py", 0o600 | 0o020000, os.makedev(0, 0))  # whiteout: deleted
    (upper / "pkg/sub").mkdir()
    os.setxattr(upper / "pkg/sub", "trusted.overlay.opaque", b"y")  # replaced directory
    (upper / "pkg/sub/only.txt").write_text("only\n")
    child, stats = pack_tree(upper, store, parent=parent)
    assert read_file(store, child.entries["pkg/m01.py"]) == b"changed\n"
    assert read_file(store, child.entries["pkg/new.py"]) == b"new\n"
    assert "pkg/m02.py" not in child.entries
    assert "pkg/sub/big.bin" not in child.entries and "pkg/sub/only.txt" in child.entries
    assert child.entries["pkg/m03.py"] == parent.entries["pkg/m03.py"]  # untouched
    assert stats.files == 3


def test_a_metadata_only_change_keeps_the_parents_content(tree: Path, tmp_path: Path) -> None:
    store = LocalChunkStore(tmp_path / "store")
    parent, _ = pack_tree(tree, store)
    upper = tmp_path / "upper"
    (upper / "pkg/sub").mkdir(parents=True)
    stub = upper / "pkg/sub/big.bin"
    stub.write_bytes(b"")  # what overlay leaves after a chmod with metacopy=on
    os.setxattr(stub, "trusted.overlay.metacopy", b"")
    os.chmod(stub, 0o700)
    child, _ = pack_tree(upper, store, parent=parent)
    entry = child.entries["pkg/sub/big.bin"]
    assert entry.mode == 0o700
    assert entry.digest == parent.entries["pkg/sub/big.bin"].digest
    assert entry.extents == parent.entries["pkg/sub/big.bin"].extents


def test_a_file_replacing_a_directory_removes_what_was_below(tree: Path, tmp_path: Path) -> None:
    store = LocalChunkStore(tmp_path / "store")
    parent, _ = pack_tree(tree, store)
    upper = tmp_path / "upper"
    (upper / "pkg").mkdir(parents=True)
    (upper / "pkg/sub").write_text("a file now\n")
    child, _ = pack_tree(upper, store, parent=parent)
    assert child.entries["pkg/sub"].kind == FILE
    assert not any(path.startswith("pkg/sub/") for path in child.entries)


def test_manifests_round_trip_and_are_checked(tree: Path, tmp_path: Path) -> None:
    store = LocalChunkStore(tmp_path / "store")
    image, _ = pack_tree(tree, store, config=ImageConfig(env={"A": "1"}, workdir="/w"))
    image_id = manifest.save(store, image)
    loaded = manifest.load(store, image_id)
    assert loaded == image and loaded.config.env == {"A": "1"}
    assert Manifest.from_bytes(image.to_bytes()).image_id == image_id
    key = manifest.manifest_key(image_id)
    (store.root / key).write_bytes(content.compress(image.to_bytes().replace(b'"A"', b'"B"')))
    with pytest.raises(CorruptChunkError):
        manifest.load(store, image_id)


def test_a_corrupted_chunk_is_refused() -> None:
    data = b"some bytes" * 100
    digest = content.digest(data)
    assert content.open_chunk(digest, content.compress(data)) == data
    with pytest.raises(CorruptChunkError):
        content.open_chunk(digest, content.compress(data + b"!"))
    with pytest.raises(CorruptChunkError):
        content.open_chunk(digest, b"not zstd at all")
