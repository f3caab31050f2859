"""The local cluster: a control plane and one worker in the background, under the data directory.

With no `EMBER_SERVER_URL`, `ember run` (and `app.run()`) start one the first time and reuse it
afterwards, the way `ray.init()` does. A supervisor process (`ember.client.supervisor`), detached
in its own session, runs `python -m ember server|worker` as its children and starts again
whichever dies, on the same address and data: the cluster heals itself, and clients reconnect
on their own. Logs go to `<data dir>/cluster/*.log`; the pids and the control plane's address
are kept beside them. A cluster started again after its supervisor died takes the same address
when it is free, so clients of the last one find it. `ember cluster status|stop` manage it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
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
from ember.proto import api_pb2, api_pb2_grpc

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0  # the supervisor stops the worker (30 s at most) and the control plane


@dataclass(frozen=True)
class LocalCluster:
    address: str
    supervisor_pid: int
    control_pid: int  # 0 while the supervisor is starting it (again)
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


def _pid(name: str) -> int:
    text = _read(f"{name}.pid")
    return int(text) if text and _alive(int(text)) else 0


def running() -> LocalCluster | None:
    """The local cluster if its supervisor is alive (its parts may be starting again)."""
    address = _read("address")
    supervisor = _pid("supervisor")
    if not (address and supervisor):
        return None
    return LocalCluster(address, supervisor, _pid("control"), _pid("worker"))


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    cluster_dir().mkdir(parents=True, exist_ok=True)
    with open(cluster_dir() / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _address() -> str:
    """The last cluster's address if its port is free (its clients may still be retrying), else
    a free port."""
    previous = _read("address")
    if previous:
        port = int(previous.rsplit(":", 1)[1])
        if _port_free(port):
            return previous
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def _wait_for_worker(address: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with grpc.insecure_channel(address) as channel:
        stub = api_pb2_grpc.EmberStub(channel)
        while time.monotonic() < deadline:
            if not _pid("supervisor"):
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
        f"{cluster_dir()}/supervisor.log, control.log and worker.log"
    )


def ensure_running() -> LocalCluster:
    """The running local cluster, started first if need be."""
    with _locked():
        cluster = running()
        if cluster is not None:
            return cluster
        if os.geteuid() != 0:
            raise errors.InvalidError(
                "the local ember cluster runs containers and needs root; run as root, or set "
                "EMBER_SERVER_URL to a cluster started by `ember server` and `ember worker`"
            )
        _stop_orphans()
        address = _address()
        (cluster_dir() / "address").write_text(address)
        supervisor_pid = _start_supervisor(address)
        _wait_for_worker(address)
        return LocalCluster(address, supervisor_pid, _pid("control"), _pid("worker"))


def _start_supervisor(address: str) -> int:
    log = open(cluster_dir() / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "ember.client.supervisor", "--address", address,
             "--data-dir", str(config.data_dir())],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not the caller's: it outlives `ember run`
        )  # fmt: skip
    finally:
        log.close()
    (cluster_dir() / "supervisor.pid").write_text(str(process.pid))
    return process.pid


def wait_for_part(name: str, other_than: int = 0, timeout_s: float = START_TIMEOUT_S) -> int:
    """The pid of the cluster's `name` part ("control" or "worker") once it runs, and is not the
    process `other_than` (one that died and is being started again)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = _pid(name)
        if pid and pid != other_than:
            return pid
        time.sleep(0.02)
    raise errors.TimeoutError(f"the local cluster's {name} did not start within {timeout_s:g} s")


def restart_worker() -> LocalCluster:
    """Start the running local cluster's worker again (it removes its containers first), with
    this process's environment; the control plane carries on. Returns once the new worker has
    registered."""
    with _locked():
        cluster = running()
        if cluster is None:
            raise errors.NotFoundError("no local ember cluster is running")
        (cluster_dir() / "worker.env").write_text(json.dumps(dict(os.environ)))
        os.kill(cluster.supervisor_pid, signal.SIGUSR1)
        worker_pid = wait_for_part("worker", other_than=cluster.worker_pid)
        _wait_for_worker(cluster.address)
        return LocalCluster(cluster.address, cluster.supervisor_pid, _pid("control"), worker_pid)


def _gone_within(pid: int, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for the process to end; whether it did."""
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def _stop_orphans() -> list[int]:
    """Parts whose supervisor is gone (it was killed; they get SIGTERM then and are on their
    way out) are stopped and waited for, and what they left is removed; their pids."""
    from ember.client.leftovers import find_leftovers, remove_leftovers

    stopped = []
    for name in ("worker", "control"):
        pid = _pid(name)
        if pid:
            os.kill(pid, signal.SIGTERM)
            if not _gone_within(pid, STOP_TIMEOUT_S):
                os.kill(pid, signal.SIGKILL)
            stopped.append(pid)
        (cluster_dir() / f"{name}.pid").unlink(missing_ok=True)
    if os.geteuid() == 0 and find_leftovers(config.data_dir()):
        remove_leftovers(config.data_dir())
    return stopped


def stop() -> list[int]:
    """Stop the local cluster: its supervisor stops the worker (which removes its containers),
    the control plane and the imagefs daemon, and removes whatever they left. Returns the pids
    that were running."""
    with _locked():
        cluster = running()
        if cluster is None:
            return _stop_orphans()
        stopped = [
            p for p in (cluster.worker_pid, cluster.control_pid, cluster.supervisor_pid) if p
        ]
        os.kill(cluster.supervisor_pid, signal.SIGTERM)
        if not _gone_within(cluster.supervisor_pid, STOP_TIMEOUT_S):
            raise errors.ExecutionError(
                f"the local cluster did not stop within {STOP_TIMEOUT_S:g} s; see "
                f"{cluster_dir()}/supervisor.log"
            )
        (cluster_dir() / "supervisor.pid").unlink(missing_ok=True)
        return stopped
