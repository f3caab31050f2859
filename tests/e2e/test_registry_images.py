"""Images from a registry, seen from inside a container: `Image.from_registry` and
`Image.from_dockerfile` against a local `docker-registry`, open and with a password.

The image pushed is the ember base root file system as one gzip layer (it has python3 and
cloudpickle, which containers need), plus a small layer with a marker file and the working
directory, and a config with an environment variable and that working directory.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ember
from ember.builder import ensure_base_image
from ember.builder.registry import DOCKER_MANIFEST
from tests.registry_support import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    PASSWORD,
    USER,
    Registry,
    config_blob,
    descriptor,
    directory,
    file,
    gzip_layer,
    gzip_tree_layer,
    skip_without_registry,
    start_registry,
    write_htpasswd,
)

pytestmark = pytest.mark.e2e

REPOSITORY, TAG = "ember/base", "v1"
MARKER = "/etc/from-registry"
MARKER_TEXT = "pulled from a registry\n"
WORKDIR = "/workspace"  # made by the top layer: the base has no such directory
TOP_LAYER = gzip_layer(
    [
        directory("etc"),
        file(MARKER.lstrip("/"), MARKER_TEXT.encode()),
        directory(WORKDIR.lstrip("/")),
        file(f"{WORKDIR.lstrip('/')}/data.txt", b"data in the working directory\n"),
    ]
)
CONFIG = config_blob(
    Env=["PATH=/usr/local/bin:/usr/bin:/bin", "REGISTRY_VAR=yes"],
    WorkingDir=WORKDIR,
    Cmd=["python3"],
)


@pytest.fixture(scope="module")
def base_layer(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The base root file system as one gzip layer file (about 60 MB, removed afterwards)."""
    skip_without_registry()
    layer = tmp_path_factory.mktemp("layers") / "base.tar.gz"
    gzip_tree_layer(ensure_base_image(), layer)
    yield layer
    layer.unlink()


def push_base(registry: Registry, base_layer: Path) -> str:
    """Push the test image; returns its reference."""
    base_digest = registry.push_blob_file(REPOSITORY, base_layer)
    registry.push_blob(REPOSITORY, TOP_LAYER)
    registry.push_blob(REPOSITORY, CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": descriptor(DOCKER_CONFIG, CONFIG),
        "layers": [
            {"mediaType": DOCKER_LAYER, "digest": base_digest, "size": base_layer.stat().st_size},
            descriptor(DOCKER_LAYER, TOP_LAYER),
        ],
    }
    registry.push_manifest(REPOSITORY, TAG, manifest)
    return f"{registry.host}/{REPOSITORY}:{TAG}"


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory, base_layer: Path) -> Iterator[str]:
    """The reference of the test image on a registry anyone may pull from."""
    root = tmp_path_factory.mktemp("registry")
    with start_registry(root / "public") as registry:
        yield push_base(registry, base_layer)
    shutil.rmtree(root)  # the registry's copy of the layer


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory, base_layer: Path) -> Iterator[str]:
    """The reference of the test image on a registry that lets in USER with PASSWORD only."""
    root = tmp_path_factory.mktemp("registry")
    with start_registry(root / "private", write_htpasswd(root / "htpasswd")) as registry:
        yield push_base(registry, base_layer)
    shutil.rmtree(root)


@pytest.fixture(scope="module")
def apps(load_app: Callable[[str], Any]) -> Any:
    return load_app("registry_images")


def inspect_on(apps: Any, image: ember.Image, paths: list[str], variables: list[str]) -> dict:
    app, inspect = apps.app_on(image, "e2e-registry-images")
    with app.run():
        return inspect.remote(paths, variables)


def test_an_image_from_a_registry_runs_with_its_files_env_and_workdir(
    apps: Any, public: str
) -> None:
    found = inspect_on(
        apps,
        ember.Image.from_registry(public),
        [MARKER, "data.txt"],
        ["REGISTRY_VAR", "PATH"],
    )
    assert found["files"] == {MARKER: MARKER_TEXT, "data.txt": "data in the working directory\n"}
    assert found["env"] == {"REGISTRY_VAR": "yes", "PATH": "/usr/local/bin:/usr/bin:/bin"}
    assert found["cwd"] == WORKDIR


def test_a_dockerfile_builds_on_a_registry_image(apps: Any, public: str, tmp_path: Path) -> None:
    (tmp_path / "local.txt").write_text("copied from the build context\n")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        f"ARG BASE={public}\n"
        "FROM $BASE\n"
        "ARG WHO=world\n"
        "# a comment, and a RUN continued on a second line\n"
        'RUN echo "hello $WHO from $(pwd)" > /built.txt && \\\n'
        "    echo ok >> /built.txt\n"
        "ENV BUILT_BY=dockerfile GREETING=hello\n"
        "WORKDIR /app2\n"
        "COPY local.txt ./\n"
        'CMD ["python3"]\n'
    )

    found = inspect_on(
        apps,
        ember.Image.from_dockerfile(dockerfile),
        ["/built.txt", "/app2/local.txt", "local.txt", MARKER],
        ["BUILT_BY", "GREETING", "REGISTRY_VAR"],
    )

    assert found["files"] == {
        "/built.txt": f"hello world from {WORKDIR}\nok\n",  # RUN runs in the image's workdir
        "/app2/local.txt": "copied from the build context\n",
        "local.txt": "copied from the build context\n",
        MARKER: MARKER_TEXT,
    }
    assert found["env"] == {"BUILT_BY": "dockerfile", "GREETING": "hello", "REGISTRY_VAR": "yes"}
    assert found["cwd"] == "/app2"


def test_a_private_registry_needs_credentials(apps: Any, private: str) -> None:
    app, _ = apps.app_on(ember.Image.from_registry(private), "e2e-registry-private")
    with pytest.raises(ember.Error) as raised, app.run():
        pass
    message = str(raised.value)
    assert f"requires credentials for image {private}" in message, message
    assert "username=" in message, message

    found = inspect_on(
        apps,
        ember.Image.from_registry(private, username=USER, password=PASSWORD),
        [MARKER],
        ["REGISTRY_VAR"],
    )
    assert found["files"] == {MARKER: MARKER_TEXT}
    assert found["env"] == {"REGISTRY_VAR": "yes"}
