"""Durability: the control plane or the worker is killed (SIGKILL) mid-work; the local cluster's
supervisor starts it again on its own, and nothing is lost or done twice."""

import contextlib
import math
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ember import config
from ember.client import local_cluster


def _wait_until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _call_ids(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT id FROM calls")}


def _new_calls(db: sqlite3.Connection, before: set[str], num_inputs: int) -> list[str]:
    """The calls stored since `before` that have `num_inputs` inputs."""
    rows = db.execute("SELECT id FROM calls WHERE num_inputs = ?", (num_inputs,))
    return [call_id for (call_id,) in rows if call_id not in before]


def _inputs_without_one_final_output(db: sqlite3.Connection, call_id: str) -> list[int]:
    """The inputs of a call that did not end with exactly one stored output: lost ones."""
    return [
        idx
        for (idx,) in db.execute(
            "SELECT i.idx FROM inputs i WHERE i.call_id = ? AND (i.state != 'done'"
            " OR (SELECT count(*) FROM outputs o WHERE o.input_id = i.id) != 1) ORDER BY i.idx",
            (call_id,),
        )
    ]


def test_control_plane_killed_mid_map_loses_nothing(basics: Any) -> None:
    cluster = local_cluster.running()
    assert cluster is not None
    with contextlib.closing(sqlite3.connect(config.data_dir() / "ember.db")) as db:
        calls_before = _call_ids(db)
        n = 3000
        ordered: list[int] = []
        # Unordered, every output the client reads goes straight to the caller (an ordered map
        # holds results back by index, which hides an output delivered twice): duplicates show.
        unordered: list[int] = []
        consumers = [
            threading.Thread(target=lambda: ordered.extend(basics.square.map(range(n)))),
            threading.Thread(
                target=lambda: unordered.extend(basics.square.map(range(n), order_outputs=False))
            ),
        ]
        for consumer in consumers:
            consumer.start()
        _wait_until(lambda: len(ordered) >= 500 and len(unordered) >= 500, timeout=120)
        remote: list[float] = []  # a .remote() waiting on the call stream when the kill lands
        caller = threading.Thread(target=lambda: remote.append(basics.sleep_for.remote(1.5)))
        caller.start()
        _wait_until(lambda: _new_calls(db, calls_before, 1), timeout=60)  # its call is stored
        os.kill(cluster.control_pid, signal.SIGKILL)
        killed_at = (len(ordered), len(unordered))
        local_cluster.wait_for_part("control", other_than=cluster.control_pid)
        for thread in [*consumers, caller]:
            thread.join(timeout=300)
            assert not thread.is_alive()
        assert remote == [1.5]
        assert max(killed_at) < n  # the kill landed mid-map
        assert ordered == [x * x for x in range(n)]
        received = Counter(math.isqrt(value) for value in unordered)  # per input index
        assert sorted(i for i, count in received.items() if count > 1) == []  # delivered twice
        assert sorted(set(range(n)) - received.keys()) == []  # never delivered
        assert len(unordered) == n
        maps = _new_calls(db, calls_before, n)
        assert len(maps) == 2
        for call_id in maps:
            assert _inputs_without_one_final_output(db, call_id) == []
            assert db.execute(
                "SELECT inputs_complete, (SELECT count(*) FROM inputs WHERE call_id = ?)"
                " FROM calls WHERE id = ?",
                (call_id, call_id),
            ).fetchone() == (1, n)


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
    local_cluster.wait_for_part("worker", other_than=cluster.worker_pid)
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
    assert (after.address, after.control_pid, after.supervisor_pid) == (
        before.address,
        before.control_pid,
        before.supervisor_pid,
    )
    assert local_cluster.running() == after
    assert basics.square.remote(7) == 49  # the new worker took over
