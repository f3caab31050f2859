"""The local cluster: a control plane and one worker in the background, under the data directory.

With no `EMBER_SERVER_URL`, `ember run` (and `app.run()`) start one the first time and reuse it
afterwards, the way `ray.init()` does. Both processes run `python -m ember server|worker`, detached
in their own sessions, logging to `<data dir>/cluster/*.log`; their pids and the control plane's
address are kept beside the logs. `ember cluster status|stop` manage it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from ember import config, errors
from ember.imagefs.client import stop_daemon
from ember.proto import api_pb2, api_pb2_grpc

START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class LocalCluster:
    address: str
    control_pid: int
    worker_pid: int


def cluster_dir() -> Path:
    return config.data_dir() / "cluster"


def _alive(pid: int) -> bool:
    """Whether `pid` is a live ember process (after a reboot, a pid file may name another)."""
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().split(")")[-1].split()[0]
        command = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    return state != "Z" and b"ember" in command


def _read(name: str) -> str | None:
    try:
        return (cluster_dir() / name).read_text().strip()
    except FileNotFoundError:
        return None


def running() -> LocalCluster | None:
    """The local cluster if both of its processes are alive."""
    address, control, worker = _read("address"), _read("control.pid"), _read("worker.pid")
    if not (address and control and worker):
        return None
    cluster = LocalCluster(address, int(control), int(worker))
    if _alive(cluster.control_pid) and _alive(cluster.worker_pid):
        return cluster
    return None


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    cluster_dir().mkdir(parents=True, exist_ok=True)
    with open(cluster_dir() / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _spawn(name: str, args: list[str]) -> int:
    log = open(cluster_dir() / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [sys.executable, "-m", "ember", *args],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    (cluster_dir() / f"{name}.pid").write_text(str(process.pid))
    return process.pid


def _wait_for_worker(address: str, worker_pid: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with grpc.insecure_channel(address) as channel:
        stub = api_pb2_grpc.EmberStub(channel)
        while time.monotonic() < deadline:
            if not _alive(worker_pid):
                break
            try:
                status = stub.ClusterStatus(api_pb2.ClusterStatusRequest(), timeout=1.0)
                if status.workers:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise errors.ConnectionError(
        "the local ember cluster did not start; its logs are in "
        f"{cluster_dir()}/control.log and {cluster_dir()}/worker.log"
    )


def ensure_running() -> LocalCluster:
    """The running local cluster, started first if need be."""
    with _locked():
        cluster = running()
        if cluster is not None:
            return cluster
        _stop_processes()
        if os.geteuid() != 0:
            raise errors.InvalidError(
                "the local ember cluster runs containers and needs root; run as root, or set "
                "EMBER_SERVER_URL to a cluster started by `ember server` and `ember worker`"
            )
        address = f"127.0.0.1:{_free_port()}"
        control_pid = start_control(address)
        worker_pid = start_worker(address)
        (cluster_dir() / "address").write_text(address)
        _wait_for_worker(address, worker_pid)
        return LocalCluster(address, control_pid, worker_pid)


def start_control(address: str) -> int:
    """Start the control plane on `address`; its state (SQLite, blobs) is in the data dir, so a
    control plane started again after a crash carries on where the last one stopped."""
    return _spawn("control", ["server", "--address", address, "--data-dir", str(config.data_dir())])


def start_worker(address: str) -> int:
    """Start the worker; one started again after a crash first removes what the last one left."""
    return _spawn("worker", ["worker", "--server", address, "--data-dir", str(config.data_dir())])


def _stop_process(name: str, timeout_s: float = 30.0) -> int | None:
    """SIGTERM the cluster's `name` process (SIGKILL after `timeout_s`); its pid if it ran."""
    pid_text = _read(f"{name}.pid")
    stopped = None
    if pid_text is not None and _alive(pid := int(pid_text)):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        stopped = pid
    (cluster_dir() / f"{name}.pid").unlink(missing_ok=True)
    return stopped


def _stop_processes() -> list[int]:
    """SIGTERM the worker (it removes its containers), then the control plane, then the host's
    imagefs daemon (which outlives worker restarts)."""
    stopped = [pid for name in ("worker", "control") if (pid := _stop_process(name)) is not None]
    (cluster_dir() / "address").unlink(missing_ok=True)
    stop_daemon(config.data_dir() / "imagefs")
    return stopped


def restart_worker() -> LocalCluster:
    """Stop the running local cluster's worker (it removes its containers) and start it again,
    with this process's environment; the control plane carries on."""
    with _locked():
        cluster = running()
        if cluster is None:
            raise errors.NotFoundError("no local ember cluster is running")
        _stop_process("worker")
        return LocalCluster(cluster.address, cluster.control_pid, start_worker(cluster.address))


def stop() -> list[int]:
    """Stop the local cluster; returns the pids that were running."""
    with _locked():
        return _stop_processes()
