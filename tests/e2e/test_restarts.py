"""Durability: the control plane or the worker is killed (SIGKILL) mid-work and started again."""

import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from ember import config
from ember.client import local_cluster


def _wait_until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_control_plane_killed_mid_map_loses_nothing(basics: Any) -> None:
    cluster = local_cluster.running()
    assert cluster is not None
    results: list[int] = []
    consumer = threading.Thread(target=lambda: results.extend(basics.square.map(range(5000))))
    consumer.start()
    _wait_until(lambda: len(results) >= 500, timeout=120)
    remote: list[float] = []  # a .remote() waiting on the call stream when the kill lands
    caller = threading.Thread(target=lambda: remote.append(basics.sleep_for.remote(1.5)))
    caller.start()
    time.sleep(0.3)
    os.kill(cluster.control_pid, signal.SIGKILL)
    killed_at = len(results)
    time.sleep(0.5)
    local_cluster.start_control(cluster.address)
    consumer.join(timeout=300)
    caller.join(timeout=300)
    assert not consumer.is_alive()
    assert remote == [1.5]
    assert killed_at < 5000  # the kill landed mid-map
    assert results == [x * x for x in range(5000)]
    with sqlite3.connect(config.data_dir() / "ember.db") as db:
        duplicates = db.execute(
            "SELECT count(*) FROM (SELECT input_id FROM outputs GROUP BY input_id, gen_index"
            " HAVING count(*) > 1)"
        ).fetchone()[0]
        lost = db.execute(
            "SELECT count(*) FROM inputs WHERE state NOT IN ('done', 'cancelled')"
            " AND function_id = (SELECT function_id FROM calls ORDER BY created_at DESC LIMIT 1)"
        ).fetchone()[0]
    assert duplicates == 0
    assert lost == 0


def _runc_containers() -> set[str]:
    root = config.data_dir() / "worker" / "runtime" / "runc"
    listed = subprocess.run(
        ["runc", "--root", str(root), "list", "-q"], capture_output=True, text=True, check=False
    )
    return set(listed.stdout.split())


def _mounts_under_worker() -> set[str]:
    root = str(config.data_dir() / "worker")
    with open("/proc/self/mountinfo") as mountinfo:
        return {line.split()[4] for line in mountinfo if line.split()[4].startswith(root)}


def test_worker_killed_mid_input_cleans_up_and_the_input_runs_again(limits: Any) -> None:
    cluster = local_cluster.running()
    assert cluster is not None
    call = limits.slow_square.spawn(9)
    _wait_until(lambda: len(_runc_containers()) > 0, timeout=60)
    time.sleep(0.5)  # the input is running
    before = _runc_containers()
    os.kill(cluster.worker_pid, signal.SIGKILL)
    local_cluster.start_worker(cluster.address)
    assert call.get(timeout=120) == 81
    assert not before & _runc_containers()  # the old worker's containers are gone
    old_mounts = {m for m in _mounts_under_worker() if any(c in m for c in before)}
    assert not old_mounts
    cgroups = Path("/sys/fs/cgroup")  # v1: <controller>/ember/<id>; v2: ember/<id>
    old_cgroups = [
        path
        for c in before
        for path in [*cgroups.glob(f"*/ember/{c}"), cgroups / "ember" / c]
        if path.exists()
    ]
    assert not old_cgroups


def test_restart_worker_starts_a_new_worker_for_the_same_control_plane(basics: Any) -> None:
    before = local_cluster.running()
    assert before is not None
    after = local_cluster.restart_worker()
    assert after.worker_pid != before.worker_pid
    assert (after.address, after.control_pid) == (before.address, before.control_pid)
    assert local_cluster.running() == after
    assert basics.square.remote(7) == 49  # the new worker took over
