"""Several containers starting a new image from PyPI at once, on a host that never had it: every
container can open every file of it (the first start records its reads meanwhile)."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from typing import Any

from ember.cli.import_file import import_app_file
from ember.client import local_cluster
from ember.imagefs import manifest

from .conftest import APPS
from .test_images import build, empty_host_cache, image_store

ROUNDS = 3
INPUTS = 30


def load_round(marker: str) -> Any:
    """tests/e2e/apps/fanout.py, defining an image no start has recorded yet."""
    os.environ["EMBER_E2E_FANOUT_ROUND"] = marker
    try:
        return import_app_file(str(APPS / "fanout.py"))
    finally:
        del os.environ["EMBER_E2E_FANOUT_ROUND"]


def test_containers_starting_a_new_image_together_all_open_every_file(cluster: Any) -> None:
    for round_number in range(ROUNDS):
        fanout = load_round(f"{round_number}-{uuid.uuid4().hex}")
        image_id, _ = build(fanout.image)
        store = image_store()
        assert not store.exists(manifest.reads_key(image_id))  # no start of it has recorded
        with fanout.app.run():
            empty_host_cache()  # the host has never seen this image, nor any other
            results = list(fanout.import_everything.map(range(INPUTS)))
        failed = {r["container"]: r["failed"] for r in results if r["failed"]}
        assert not failed, f"round {round_number}: imports failed: {failed}"
        containers = {r["container"] for r in results}
        assert len(containers) >= 4, f"round {round_number}: only {len(containers)} containers"
        assert min(r["shared_libraries"] for r in results) >= 50  # scipy's extension modules
        # The first start recorded what it read (later ones prefetch it).
        deadline = time.monotonic() + 60
        while not store.exists(manifest.reads_key(image_id)):
            assert time.monotonic() < deadline, f"round {round_number}: nothing was recorded"
            time.sleep(0.2)


def test_containers_still_open_every_file_after_their_worker_was_killed(cluster: Any) -> None:
    """The same image again on a worker killed (SIGKILL) in the middle of a fan-out, with
    standbys of its shape waiting: the supervisor starts the worker again, the map finishes,
    and every container, those of the map after the restart included, imports everything."""
    fanout = load_round(f"killed-{uuid.uuid4().hex}")
    build(fanout.image)
    results: list[dict] = []
    with fanout.app.run():
        empty_host_cache()
        results += fanout.import_everything.map(range(INPUTS))  # standbys of its shape follow
        during: list[dict] = []
        mapping = threading.Thread(
            target=lambda: during.extend(fanout.import_everything.map(range(INPUTS)))
        )
        mapping.start()
        deadline = time.monotonic() + 120
        while len(during) < 5:
            assert time.monotonic() < deadline, "the second map did not start"
            time.sleep(0.05)
        before = local_cluster.running()
        assert before is not None
        os.kill(before.worker_pid, signal.SIGKILL)
        local_cluster.wait_for_part("worker", other_than=before.worker_pid)
        mapping.join(timeout=300)
        assert not mapping.is_alive(), "the map did not finish after the worker was killed"
        assert sorted(r["number"] for r in during) == list(range(INPUTS))
        results += during
        results += fanout.import_everything.map(range(INPUTS))  # on the new worker
    failed = {r["container"]: r["failed"] for r in results if r["failed"]}
    assert not failed, f"imports failed: {failed}"
    assert min(r["shared_libraries"] for r in results) >= 50
