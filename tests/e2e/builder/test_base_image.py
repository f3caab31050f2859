import importlib.metadata
import os
import shutil
import time
import uuid
from pathlib import Path

import cloudpickle
import pytest

from ember.builder import ensure_base_image
from ember.container import BindMount, ContainerConfig, RuncRuntime
from ember.errors import ExecutionError, InvalidError

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def base_image() -> Path:
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.skip("building the base image needs root and debootstrap")
    return ensure_base_image()


def test_second_call_is_a_cache_hit(base_image: Path) -> None:
    started = time.perf_counter()
    again = ensure_base_image()
    elapsed = time.perf_counter() - started
    assert again == base_image
    assert elapsed < 0.001
    assert (base_image / "usr/bin/python3").exists()
    assert not any((base_image / "usr/share/doc").iterdir())


async def test_python_and_cloudpickle_work_in_a_container(base_image: Path, tmp_path: Path) -> None:
    if shutil.which("runc") is None:
        pytest.skip("running containers needs runc")
    shared = tmp_path / "shared"
    shared.mkdir()
    # A closure travels by value, as a function sent to a container does.
    offset = 40
    (shared / "fn.pkl").write_bytes(cloudpickle.dumps(lambda x: x + offset))
    code = (
        "import pickle, sys, cloudpickle; "
        "fn = pickle.load(open('/shared/fn.pkl', 'rb')); "
        "print(sys.version_info[:2], cloudpickle.__version__, fn(2))"
    )
    runtime = RuncRuntime(tmp_path / "state")
    container_id = f"test-{uuid.uuid4().hex[:12]}"
    config = ContainerConfig(
        container_id=container_id,
        image_root=base_image,
        args=["python3", "-c", code],
        env={},
        hostname="base-image-test",
        mounts=(BindMount(shared, "/shared"),),
    )
    try:
        await runtime.start(config)
        status = await runtime.wait(container_id)
        stdout, stderr = (path.read_text() for path in runtime.log_paths(container_id))
    finally:
        await runtime.cleanup_stale()  # the container, and the runtime's mount point directory
    assert status.exit_code == 0, stderr
    assert stdout == f"(3, 11) {importlib.metadata.version('cloudpickle')} 42\n"


def test_unsupported_python_version_names_the_supported_ones() -> None:
    with pytest.raises(InvalidError, match=r"3\.11, 3\.13"):
        ensure_base_image("2.7")


def test_failed_debootstrap_reports_its_output_and_leaves_no_image(
    base_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBER_IMAGE_DIR", str(tmp_path / "images"))
    monkeypatch.setenv("EMBER_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")
    with pytest.raises(ExecutionError, match=r"(?s)debootstrap bookworm.*Last output:.*E: "):
        ensure_base_image()
    images = tmp_path / "images"
    assert [path.name for path in images.iterdir() if not path.name.endswith(".lock")] == []
