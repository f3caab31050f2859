import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ember.builder import ensure_base_image
from ember.container import RuncRuntime


@pytest.fixture(scope="session")
def base_image() -> Path:
    if os.geteuid() != 0 or shutil.which("runc") is None:
        pytest.skip("real containers need root and runc")
    return ensure_base_image()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
async def runtime(base_image: Path, state_dir: Path) -> AsyncIterator[RuncRuntime]:
    runtime = RuncRuntime(state_dir)
    yield runtime
    await runtime.cleanup_stale()
