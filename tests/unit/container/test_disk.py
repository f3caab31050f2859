"""A container's disk: its own file system of its size, copied from an empty one made once per
size, holes kept, nothing shared between two disks of one template."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.container import disk, overlay
from ember.errors import ExecutionError

SIZE_MB = 64


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[list[Path]]:
    """Mount points to unmount at the end, whatever the test did."""
    points: list[Path] = []
    yield points
    for point in points:
        for mount_point in overlay.mounts_under(point):
            overlay.unmount(mount_point)


async def new_disk(tmp_path: Path, mounted: list[Path], name: str, size_mb: int = SIZE_MB) -> Path:
    point = tmp_path / name
    point.mkdir()
    mounted.append(point)
    await disk.make_disk(tmp_path / f"{name}.img", point, size_mb, tmp_path / "templates")
    return point


async def test_disks_of_one_template_are_apart_and_each_its_size(
    tmp_path: Path, mounted: list[Path]
) -> None:
    first = await new_disk(tmp_path, mounted, "first")
    template = tmp_path / "templates" / f"ext4-{SIZE_MB}m.img"
    made = template.stat()
    second = await new_disk(tmp_path, mounted, "second")
    assert template.stat().st_ino == made.st_ino  # made once, then copied
    (first / "only-here").write_text("first")
    assert not (second / "only-here").exists()
    for point in (first, second):
        stat = os.statvfs(point)
        assert (SIZE_MB - 8) << 20 <= stat.f_blocks * stat.f_frsize <= SIZE_MB << 20
    assert [path.name for path in template.parent.iterdir()] == [template.name]


async def test_a_new_disk_holds_only_the_blocks_its_file_system_wrote(
    tmp_path: Path, mounted: list[Path]
) -> None:
    await new_disk(tmp_path, mounted, "big", size_mb=4096)
    image = tmp_path / "big.img"
    assert image.stat().st_size == 4096 << 20
    assert image.stat().st_blocks * 512 < 8 << 20


async def test_a_size_mkfs_refuses_leaves_no_template_behind(tmp_path: Path) -> None:
    point = tmp_path / "tiny"
    point.mkdir()
    templates = tmp_path / "templates"
    with pytest.raises(ExecutionError, match="cannot make a container's disk"):
        await disk.make_disk(tmp_path / "tiny.img", point, 0, templates)
    assert list(templates.iterdir()) == []
