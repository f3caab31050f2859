"""The local cluster heals itself: the worker, the control plane or the imagefs daemon is killed
(SIGKILL) during a map, nobody starts anything by hand, and the map finishes with every result
exactly once, whatever the function's retries. Meanwhile a caller is told why it waits."""

import contextlib
import math
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ember import config
from ember.client import local_cluster
from ember.client.leftovers import find_leftovers
from tests.e2e.conftest import APPS
from tests.e2e.test_restarts import _call_ids, _inputs_without_one_final_output, _new_calls

pytestmark = pytest.mark.e2e

N = 3000


@pytest.fixture(scope="module")
def healing(load_app: Any) -> Iterator[Any]:
    module = load_app("healing")
    with module.app.run():
        yield module


def _wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _imagefs_daemon_pid() -> int:
    return int((config.data_dir() / "imagefs" / "daemon.pid").read_text())


def _map_through(function: Any, kill: Callable[[], None]) -> list[int]:
    """Run an unordered map of N squares, `kill` once 500 results are in; what the caller got.
    Checks that every input of the map's call ended with exactly one stored output."""
    with contextlib.closing(sqlite3.connect(config.data_dir() / "ember.db")) as db:
        before = _call_ids(db)
        results: list[int] = []
        failure: list[BaseException] = []

        def consume() -> None:
            try:
                results.extend(function.map(range(N), order_outputs=False))
            except BaseException as error:  # the test reports it below
                failure.append(error)

        consumer = threading.Thread(target=consume)
        consumer.start()
        _wait_until(lambda: len(results) >= 500 or failure, 120, "the map's first results")
        kill()
        killed_at = len(results)
        consumer.join(timeout=300)
        assert not consumer.is_alive(), "the map did not finish"
        assert failure == []
        assert killed_at < N, "the kill landed after the map"
        [call_id] = _new_calls(db, before, N)
        assert _inputs_without_one_final_output(db, call_id) == []
    return results


def _exactly_once(results: list[int]) -> None:
    received = Counter(math.isqrt(value) for value in results)
    assert sorted(i for i, count in received.items() if count > 1) == []  # delivered twice
    assert sorted(set(range(N)) - received.keys()) == []  # never delivered
    assert len(results) == N


def _kill_worker() -> None:
    cluster = local_cluster.running()
    assert cluster is not None
    os.kill(cluster.worker_pid, signal.SIGKILL)


def _kill_control_plane() -> None:
    cluster = local_cluster.running()
    assert cluster is not None
    os.kill(cluster.control_pid, signal.SIGKILL)


def _kill_imagefs_daemon() -> None:
    os.kill(_imagefs_daemon_pid(), signal.SIGKILL)


@pytest.mark.parametrize("retries", ["default", "3"])
@pytest.mark.parametrize(
    "kill", [_kill_worker, _kill_control_plane, _kill_imagefs_daemon], ids=lambda k: k.__name__
)
def test_a_map_finishes_exactly_once_whatever_was_killed(
    healing: Any, kill: Callable[[], None], retries: str
) -> None:
    before = local_cluster.running()
    assert before is not None
    function = healing.square if retries == "default" else healing.square_with_retries
    _exactly_once(_map_through(function, kill))
    after = local_cluster.running()
    assert after is not None and after.supervisor_pid == before.supervisor_pid
    if kill is _kill_worker:
        assert after.worker_pid not in (0, before.worker_pid)  # started again, by the supervisor
    if kill is _kill_control_plane:
        assert after.control_pid not in (0, before.control_pid)


def test_a_map_finishes_exactly_once_when_the_supervisor_itself_is_killed(healing: Any) -> None:
    """The supervisor's children stop with it; the map's client, finding no control plane,
    starts the local cluster again on the same address and carries on."""
    before = local_cluster.running()
    assert before is not None

    def kill_supervisor() -> None:
        os.kill(before.supervisor_pid, signal.SIGKILL)

    _exactly_once(_map_through(healing.square, kill_supervisor))
    after = local_cluster.running()
    assert after is not None
    assert after.supervisor_pid != before.supervisor_pid
    assert after.address == before.address


def test_a_caller_is_told_while_no_worker_is_connected(healing: Any) -> None:
    """The worker stops answering (SIGSTOP): once the control plane gives it up, a caller's
    terminal says why its call waits, and the call finishes when the worker is back."""
    cluster = local_cluster.running()
    assert cluster is not None
    os.kill(cluster.worker_pid, signal.SIGSTOP)
    try:
        caller = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ember",
                "run",
                str(APPS / "healing.py::greet"),
                "--name",
                "you",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        told: list[str] = []
        reader = threading.Thread(target=lambda: told.extend(iter(caller.stderr.readline, "")))
        reader.start()
        _wait_until(
            lambda: any("waiting: no worker connected" in line for line in told),
            timeout=90,
            what="the caller to be told no worker is connected",
        )
    finally:
        os.kill(cluster.worker_pid, signal.SIGCONT)
    stdout, _ = caller.communicate(timeout=120)
    reader.join(timeout=10)
    assert caller.returncode == 0, "".join(told)
    assert "hello you" in stdout


def test_cluster_stop_leaves_nothing_on_the_host() -> None:
    """A cluster of its own: used (containers, standbys, images), then stopped."""
    data_dir = Path(tempfile.mkdtemp(prefix="ember-leftovers-"))
    env = {**os.environ, "EMBER_DATA_DIR": str(data_dir)}

    def ember(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ember", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    try:
        used = ember("run", str(APPS / "healing.py::greet"))
        assert used.returncode == 0, used.stderr
        assert find_leftovers(data_dir)  # while it runs there is something to find
        stopped = ember("cluster", "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert find_leftovers(data_dir) == []
    finally:
        ember("cluster", "stop")
        subprocess.run(["rm", "-rf", str(data_dir)], check=False)


def test_a_cluster_whose_directory_was_removed_stops_and_leaves_nothing() -> None:
    """Its data directory deleted under it, nothing could find the cluster again (`ember
    cluster stop`, the next `ember run`): it stops itself rather than run on for ever."""
    data_dir = Path(tempfile.mkdtemp(prefix="ember-orphan-"))
    env = {**os.environ, "EMBER_DATA_DIR": str(data_dir)}
    pids: list[int] = []
    try:
        used = subprocess.run(
            [sys.executable, "-m", "ember", "run", str(APPS / "healing.py::greet")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert used.returncode == 0, used.stderr
        cluster_dir = data_dir / "cluster"
        pids = [int((cluster_dir / f"{name}.pid").read_text()) for name in _PARTS]
        subprocess.run(["rm", "-rf", str(cluster_dir)], check=True)
        _wait_until(lambda: not any(_running(pid) for pid in pids), 60, "the cluster to stop")
        assert find_leftovers(data_dir) == []
    finally:
        if pids and _running(pids[0]):  # it did not stop: stop it as `ember cluster stop` would
            os.kill(pids[0], signal.SIGTERM)
            _wait_until(lambda: not any(_running(pid) for pid in pids), 120, "the cluster to stop")
        subprocess.run([sys.executable, "-m", "ember", "cluster", "stop"], env=env, check=False)
        subprocess.run(["rm", "-rf", str(data_dir)], check=False)


_PARTS = ("supervisor", "control", "worker")


def _running(pid: int) -> bool:
    """Whether `pid` is a process that has not ended (a zombie has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
