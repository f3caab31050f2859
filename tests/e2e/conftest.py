"""One real local cluster (control plane + worker, real runc containers) per test session."""

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ember.builder import ensure_base_image
from ember.cli.import_file import import_app_file
from ember.client import local_cluster

APPS = Path(__file__).parent / "apps"


def _can_run_containers() -> bool:
    return os.geteuid() == 0 and shutil.which("runc") is not None


@pytest.fixture(scope="session")
def cluster() -> Iterator[local_cluster.LocalCluster]:
    if not _can_run_containers():
        pytest.skip("end-to-end tests run real containers: they need root and runc")
    ensure_base_image()
    yield local_cluster.ensure_running()
    local_cluster.stop()


@pytest.fixture(scope="session")
def load_app(cluster: local_cluster.LocalCluster) -> Callable[[str], Any]:
    """Import tests/e2e/apps/<name>.py the way `ember run` imports a user's file."""

    def load(name: str) -> Any:
        return sys.modules.get(name) or import_app_file(str(APPS / f"{name}.py"))

    return load


@pytest.fixture(scope="module")
def basics(load_app: Callable[[str], Any]) -> Iterator[Any]:
    """tests/e2e/apps/basics.py, running for the module's tests."""
    module = load_app("basics")
    with module.app.run():
        yield module


@pytest.fixture(scope="module")
def limits(load_app: Callable[[str], Any]) -> Iterator[Any]:
    """tests/e2e/apps/limits.py, running for the module's tests."""
    module = load_app("limits")
    with module.app.run():
        yield module


def ember_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> Any:
    """Run the `ember` command as a user would; returns the completed process."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "ember", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
