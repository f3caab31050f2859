"""The local cluster's supervisor: runs the control plane and the worker as its children, and starts
again whichever dies, on the same address and data directory.

    python -m ember.client.supervisor --address HOST:PORT --data-dir DIR

The control plane keeps its state in the data directory and the worker re-registers under its
old id, so a restarted part carries on where the dead one stopped, and clients, which repeat
their requests while the control plane is unreachable, never notice more than a pause. A part
that dies again at once is started again after a growing pause (up to `MAX_BACKOFF_S`), and every
start and death is written to `cluster/supervisor.log`.

Signals: SIGTERM (or SIGINT) stops the cluster: the worker first (it removes its containers),
then the control plane, then the host's imagefs daemon, then whatever they left on the host
(`leftovers.remove_leftovers`). SIGUSR1 starts the worker again at once, with the environment
`cluster/worker.env` holds (`local_cluster.restart_worker`). The children get SIGTERM if the
supervisor itself dies (PR_SET_PDEATHSIG), so no part outlives it.

A cluster whose `cluster/` directory was removed (its data directory deleted under it) stops as on
SIGTERM: nothing could find it any more (`ember cluster stop` and the next `ember run` look for it
there), so it would run on beside the next one for ever.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("ember.supervisor")

STOP_WORKER_S = 30.0  # the worker removes its containers as it stops
STOP_CONTROL_S = 10.0
FIRST_BACKOFF_S = 0.2
MAX_BACKOFF_S = 10.0
HEALTHY_AFTER_S = 30.0  # a part that ran this long before it died is started again at once
DIRECTORY_CHECK_S = 2.0  # how often the supervisor looks for its cluster directory

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Part:
    """One supervised process: the control plane or the worker."""

    name: str
    args: list[str]
    cluster_dir: Path
    process: subprocess.Popen[bytes] | None = None
    pidfd: int = -1
    started_at: float = 0.0
    backoff_s: float = FIRST_BACKOFF_S
    restart_at: float | None = None  # when to start it again, after it died
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def start(self) -> None:
        log_file = open(self.cluster_dir / f"{self.name}.log", "ab")  # noqa: SIM115 - the child's
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ember", *self.args],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.env,
                preexec_fn=_die_with_parent,
            )
        finally:
            log_file.close()
        self.pidfd = os.pidfd_open(self.process.pid)
        self.started_at = time.monotonic()
        self.restart_at = None
        (self.cluster_dir / f"{self.name}.pid").write_text(str(self.process.pid))
        log.info("started the %s (pid %d)", self.name, self.process.pid)

    def reap(self) -> int | None:
        """The exit status once the process has ended (it is reaped), else None."""
        if self.process is None or self.process.poll() is None:
            return None
        returncode = self.process.returncode
        os.close(self.pidfd)
        self.process, self.pidfd = None, -1
        (self.cluster_dir / f"{self.name}.pid").unlink(missing_ok=True)
        return returncode

    def died(self, returncode: int) -> None:
        """Plan the next start: at once after a long life, else after a growing pause."""
        ran_s = time.monotonic() - self.started_at
        if ran_s > HEALTHY_AFTER_S:
            self.backoff_s = FIRST_BACKOFF_S
        delay = self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, MAX_BACKOFF_S)
        self.restart_at = time.monotonic() + delay
        how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited ({returncode})"
        log.warning(
            "the %s %s after %.1f s; starting it again in %.1f s", self.name, how, ran_s, delay
        )

    def stop(self, timeout_s: float) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`; waits until it is gone."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("the %s did not stop within %.0f s; killing it", self.name, timeout_s)
            self.process.kill()
            self.process.wait()
        self.reap()


class Supervisor:
    def __init__(self, address: str, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._cluster_dir = data_dir / "cluster"
        self.control = Part(
            "control",
            ["server", "--address", address, "--data-dir", str(data_dir)],
            self._cluster_dir,
        )
        self.worker = Part(
            "worker",
            ["worker", "--server", address, "--data-dir", str(data_dir)],
            self._cluster_dir,
        )
        self._stopping = False
        self._restart_worker = False

    def run(self) -> None:
        wakeup_read, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wakeup_write)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGUSR1, self._on_restart_worker)
        self.control.start()
        self.worker.start()
        try:
            self._loop(wakeup_read)
        finally:
            self._stop_all()

    def _on_stop(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _on_restart_worker(self, signum: int, frame: object) -> None:
        self._restart_worker = True

    def _loop(self, wakeup_read: int) -> None:
        parts = (self.control, self.worker)
        while not self._stopping:
            if self._restart_worker:
                self._restart_worker = False
                self._restart_worker_now()
            now = time.monotonic()
            for part in parts:
                if part.process is None and part.restart_at is not None and part.restart_at <= now:
                    part.start()
            waits = [part.restart_at - now for part in parts if part.restart_at is not None]
            with selectors.DefaultSelector() as selector:
                selector.register(wakeup_read, selectors.EVENT_READ)
                for part in parts:
                    if part.pidfd >= 0:
                        selector.register(part.pidfd, selectors.EVENT_READ, part)
                ready = selector.select(max(0.0, min([*waits, DIRECTORY_CHECK_S])))
            if not self._cluster_dir.is_dir():
                log.warning(
                    "%s was removed: nothing can find this cluster; stopping it", self._cluster_dir
                )
                return
            for key, _ in ready:
                if key.fd == wakeup_read:
                    while True:  # the signal handlers ran already; empty the pipe
                        try:
                            if not os.read(wakeup_read, 64):
                                break
                        except BlockingIOError:
                            break
                    continue
                part = key.data
                returncode = part.reap()
                if returncode is not None and not self._stopping:
                    part.died(returncode)

    def _restart_worker_now(self) -> None:
        env_file = self._cluster_dir / "worker.env"
        if env_file.exists():
            self.worker.env = json.loads(env_file.read_text())
        log.info("starting the worker again, as asked")
        self.worker.stop(STOP_WORKER_S)
        self.worker.backoff_s = FIRST_BACKOFF_S
        self.worker.start()

    def _stop_all(self) -> None:
        from ember.client.leftovers import remove_leftovers

        log.info("stopping the cluster")
        self.worker.stop(STOP_WORKER_S)
        self.control.stop(STOP_CONTROL_S)
        found = remove_leftovers(self._data_dir)
        if found:
            log.warning("removed what the cluster left on the host: %s", "; ".join(found))
        log.info("the cluster stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ember.client.supervisor")
    parser.add_argument("--address", required=True)
    parser.add_argument("--data-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    (args.data_dir / "cluster").mkdir(parents=True, exist_ok=True)
    Supervisor(args.address, args.data_dir).run()


if __name__ == "__main__":
    main()
