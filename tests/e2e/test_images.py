"""Images defined in code: every builder method seen from inside a container, the build cache,
failing steps, lazy loading, prefetching what a first start read, damaged content, and a worker
restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ember
from ember import config
from ember.client import local_cluster
from ember.imagefs import content, manifest
from ember.imagefs.client import ImageFSClient, stop_daemon
from ember.imagefs.metadata import object_path
from ember.imagefs.store import LocalChunkStore
from ember.sdk._calls import connection
from ember.sdk._sync import run_blocking

from .conftest import ember_cli


def build(image: ember.Image) -> tuple[str, list[str]]:
    """Build `image` through the cluster; returns its id and the step lines shown."""
    shown: list[str] = []

    async def go() -> str:
        return await image._build(await connection(), shown.append)

    image_id = run_blocking(go())
    steps = [line for text in shown for line in text.splitlines() if line.startswith("[")]
    return image_id, steps


def imagefs_root() -> Path:
    return config.data_dir() / "imagefs"


def imagefs_stats() -> dict[str, Any]:
    return asyncio.run(ImageFSClient(imagefs_root()).stats())


def image_store() -> LocalChunkStore:
    return LocalChunkStore(config.data_dir() / "imagestore")


def empty_host_cache() -> None:
    """What a host that never saw any image has: no daemon, no objects, no metadata.

    Function containers must be gone first: one left on the stopped daemon's layers would take
    the next input and die of it (SIGBUS on a page of the interpreter not yet read). A standby
    may stay: the worker sees that its daemon is gone and does not use it."""
    deadline = time.monotonic() + 60
    while local_cluster.running() and _live_containers() > 0:
        assert time.monotonic() < deadline, "function containers did not scale down"
        time.sleep(0.2)
    stop_daemon(imagefs_root())
    for name in ("objects", "images", "partial", "mnt"):
        shutil.rmtree(imagefs_root() / name, ignore_errors=True)


def _containers() -> int:
    import subprocess

    root = config.data_dir() / "worker" / "runtime" / "runc"
    listed = subprocess.run(
        ["runc", "--root", str(root), "list", "-q"], capture_output=True, text=True, check=False
    )
    return len(listed.stdout.split())


def _live_containers() -> int:
    from ember.proto import api_pb2

    async def status() -> int:
        conn = await connection()
        response = await conn.call(conn.ember.ClusterStatus, api_pb2.ClusterStatusRequest())
        return sum(worker.containers for worker in response.workers)

    return run_blocking(status())


@pytest.fixture(scope="module")
def images(load_app: Any) -> Iterator[Any]:
    module = load_app("images")
    with module.app.run():
        yield module


@pytest.fixture(scope="module")
def lazy(load_app: Any) -> Iterator[Any]:
    module = load_app("lazy")
    with module.app.run():
        yield module


def test_every_builder_method_is_seen_inside_the_container(images: Any) -> None:
    found = images.inspect.remote()
    assert found["jq"] == "/usr/bin/jq" and found["jq_output"] == "2"  # apt_install
    assert found["six"] == "1.16.0"  # pip_install
    assert found["tomli"] == {"a": "b"}  # uv_pip_install, and image.imports()
    assert found["idna"] == "3.7"  # pip_install_from_requirements
    assert found["built"] == "built" and found["home"] == "/root"  # run_commands
    assert found["model_dir"] == "/models"  # env
    assert found["cwd"] == "/work"  # workdir
    assert found["weights"] == "weights made at build time in /work"  # run_function
    assert found["assets"] == ["one.txt", "sub/two.txt"]  # add_local_dir
    assert found["asset_one"] == "asset one"
    assert found["note"] == "a note"  # add_local_file
    assert found["mypkg"] == "hello from mypkg"  # add_local_python_source


def test_each_function_runs_on_its_own_image(images: Any) -> None:
    assert images.plain_image.remote() is False  # the app's image has /etc/built; this one not


def test_an_unchanged_rebuild_is_all_cache_hits(images: Any) -> None:
    started = time.monotonic()
    _, steps = build(images.image)
    assert steps and all(line.endswith("(cached)") for line in steps), steps
    assert time.monotonic() - started < 30  # generous: the figure is in benchmarks/


def test_a_changed_step_rebuilds_from_there_on(cluster: Any) -> None:
    base = ember.Image.debian_slim().run_commands("echo same > /same")
    first_id, _ = build(base.run_commands(f"echo {uuid.uuid4().hex} > /changes"))
    second_id, steps = build(base.run_commands(f"echo {uuid.uuid4().hex} > /changes"))
    assert first_id != second_id
    assert [line.endswith("(cached)") for line in steps] == [True, True, False]


def test_force_build_rebuilds_a_cached_step(cluster: Any) -> None:
    image = ember.Image.debian_slim().run_commands("echo forced > /forced")
    build(image)
    _, steps = build(
        ember.Image.debian_slim().run_commands("echo forced > /forced", force_build=True)
    )
    assert [line.endswith("(cached)") for line in steps] == [True, False]


def test_a_failing_step_names_its_command_and_output_and_caches_nothing(cluster: Any) -> None:
    failing = ember.Image.debian_slim().run_commands(
        "echo fine > /fine", "echo about-to-fail; ls /no/such/path; exit 3"
    )
    with pytest.raises(ember.ExecutionError) as raised:
        build(failing)
    message = str(raised.value)
    assert "exit 3" in message and "about-to-fail" in message
    assert "No such file or directory" in message  # the tail of its output
    with pytest.raises(ember.ExecutionError) as again:
        build(failing)  # tried again, not answered from a cache
    assert "about-to-fail" in str(again.value)


def test_a_cold_start_on_an_empty_host_reads_lazily(lazy: Any) -> None:
    image_id, _ = build(lazy.big_image)
    size = manifest.load(image_store(), image_id).size
    empty_host_cache()
    assert lazy.read_page.remote(40 << 20) == 4096
    fetched = imagefs_stats()["bytes_fetched"]
    assert size > lazy.BIG_MIB << 20
    assert fetched < size * 0.4, (fetched, size)  # python, the harness, and one chunk of big.bin
    assert lazy.checksum_matches.remote() is True  # the rest arrives when read, intact


def test_a_later_cold_start_on_an_empty_host_prefetches_what_the_first_read(lazy: Any) -> None:
    image_id, _ = build(lazy.big_image)
    store = image_store()
    big = manifest.load(store, image_id).entries["big.bin"]
    page = 40 << 20
    empty_host_cache()
    assert lazy.read_page.remote(page) == 4096  # a first start: the worker records what it read
    deadline = time.monotonic() + 60
    while not store.exists(manifest.reads_key(image_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    recorded = json.loads(store.get(manifest.reads_key(image_id)))["reads"]
    pieces = [row for row in recorded if row.get("file") == big.digest]
    # The page read (with the kernel's read-ahead), not the whole 1 MiB chunk it lies in.
    assert any(row["offset"] <= page < row["offset"] + row["length"] for row in pieces)
    assert sum(row["length"] for row in pieces) < 1 << 20, pieces
    # The small files it opened (the interpreter's, the harness's), not the chunks they are in.
    small = [row["object"] for row in recorded if "object" in row]
    assert len(small) > 10, recorded
    pack = store.get(manifest.prefetch_key(image_id))
    assert len(pack) == sum(row["size"] for row in recorded)  # what was read, stored again

    empty_host_cache()
    assert lazy.read_page.remote(0) == 4096  # reads another page; the recorded one comes ahead
    partial = imagefs_root() / "partial" / big.digest
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError), partial.open("rb") as file:
            file.seek(page)
            if any(file.read(4096)):  # random bytes, no longer a hole
                break
        time.sleep(0.2)
    else:
        raise AssertionError("the recorded page of big.bin was not prefetched")
    objects = imagefs_root() / "objects"
    while not all((objects / object_path(d)).exists() for d in small):
        assert time.monotonic() < deadline, "the recorded small files were not prefetched"
        time.sleep(0.2)
    assert lazy.checksum_matches.remote() is True  # prefetched and pushed pages are the right ones


def test_a_corrupted_chunk_is_detected_and_not_served(lazy: Any) -> None:
    image_id, _ = build(lazy.secret_image)
    store = image_store()
    chunk = manifest.load(store, image_id).entries["secret.txt"].extents[0].chunk
    path = store.root / content.chunk_key(chunk)
    good = path.read_bytes()
    empty_host_cache()
    path.chmod(0o644)
    path.write_bytes(content.compress(content.decompress(good).replace(b"only", b"ONLY")))
    try:
        with pytest.raises(OSError) as raised:  # the function's own exception, as it was raised
            lazy.read_secret.remote()
        assert "Input/output error" in str(raised.value)
        assert imagefs_stats()["corrupt_chunks"] > 0
    finally:
        path.write_bytes(good)
    assert lazy.read_secret.remote() == lazy.SECRET


def test_a_worker_restart_keeps_serving_images(lazy: Any) -> None:
    lazy.pid.remote()
    daemon_pid = int((imagefs_root() / "daemon.pid").read_text())
    cluster = local_cluster.running()
    assert cluster is not None
    os.kill(cluster.worker_pid, signal.SIGKILL)
    local_cluster.wait_for_part("worker", other_than=cluster.worker_pid)
    deadline = time.monotonic() + 60
    # The new worker removes the old containers, and the control plane hears they are gone.
    while (_containers() or _live_containers()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert lazy.read_secret.remote() == lazy.SECRET  # a new container, through imagefs
    assert int((imagefs_root() / "daemon.pid").read_text()) == daemon_pid  # the same daemon


def test_containers_on_an_imagefs_daemon_that_ended_are_stopped(lazy: Any) -> None:
    assert lazy.read_page_long_lived.remote(0) == 4096
    os.kill(int((imagefs_root() / "daemon.pid").read_text()), signal.SIGKILL)
    # Its pages not yet read are gone with the daemon: the worker stops the container long
    # before its scaledown window ends, and the next input gets a new one on a new daemon.
    deadline = time.monotonic() + 30
    while _live_containers() > 0:
        assert time.monotonic() < deadline, "a container on the ended daemon kept running"
        time.sleep(0.2)
    assert lazy.read_page_long_lived.remote(40 << 20) == 4096


def test_the_cli_lists_inspects_and_removes_images(cluster: Any) -> None:
    marker = uuid.uuid4().hex
    image_id, _ = build(ember.Image.debian_slim().run_commands(f"echo {marker} > /gc.txt"))
    store = image_store()
    own_chunk = manifest.load(store, image_id).entries["gc.txt"].extents[0].chunk
    wide = {"COLUMNS": "250"}

    listed = ember_cli("image", "list", env=wide)
    assert listed.returncode == 0 and image_id in listed.stdout

    inspected = ember_cli("image", "inspect", image_id, env=wide)
    assert inspected.returncode == 0, inspected.stderr
    assert "debian_slim" in inspected.stdout and f"echo {marker} > /gc.txt" in inspected.stdout
    configured, _ = build(ember.Image.debian_slim().workdir(f"/srv/{marker}"))
    shown = ember_cli("image", "inspect", configured, env=wide)
    assert f"workdir  /srv/{marker}" in shown.stdout  # the config, from the content index

    removed = ember_cli("image", "rm", image_id, env=wide)
    assert removed.returncode == 0, removed.stderr
    assert not store.exists(content.chunk_key(own_chunk))  # its own content is gone
    assert not store.exists(manifest.manifest_key(image_id))
    assert image_id not in ember_cli("image", "list", env=wide).stdout

    again = ember_cli("image", "rm", image_id)
    assert again.returncode == 1 and "not found" in again.stderr
