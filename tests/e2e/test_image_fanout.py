"""Several containers starting a new image from PyPI at once, on a host that never had it: every
container can open every file of it (the first start records its reads meanwhile)."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from ember.cli.import_file import import_app_file
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
