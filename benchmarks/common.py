"""What the benchmarks share: figures, percentiles, time limits, the machine, the local cluster."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
APPS_DIR = BENCH_DIR / "apps"


class BenchTimeout(Exception):
    """A benchmark ran past its time limit."""


@dataclass
class Figure:
    """One measured number, with the baseline measured beside it in the same run."""

    name: str
    value: float | None
    unit: str  # "ms" or "/s"
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""  # e.g. "<= 2 ms"
    met: bool | None = None
    note: str = ""

    @property
    def higher_is_better(self) -> bool:
        return self.unit == "/s"

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline


@dataclass
class Outcome:
    """What one benchmark produced: figures, or why it did not run; plus free-form details."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    skipped: str = ""
    seconds: float = 0.0
    cpu: str = ""  # how busy the machine was meanwhile, and by whom


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def summary_ms(seconds: Sequence[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"n={len(ms)} min={min(ms):.2f} p50={percentile(ms, 50):.2f} "
        f"p90={percentile(ms, 90):.2f} p99={percentile(ms, 99):.2f} max={max(ms):.2f} ms"
    )


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise BenchTimeout in the main thread if the block runs longer than `seconds`.

    SIGALRM interrupts the blocking waits the SDK makes (a lock acquire on a future), so even a
    call that never returns ends the benchmark. Nested limits are not supported.
    """

    def expire(signum: int, frame: object) -> None:
        raise BenchTimeout(f"{what} ran past its limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def deadline_loop(count: int, seconds: float) -> Iterator[int]:
    """range(count), stopping early once `seconds` have passed."""
    give_up = time.monotonic() + seconds
    for i in range(count):
        if time.monotonic() > give_up:
            return
        yield i


# ---- the machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> float:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    return 0.0


def _command_line(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""


def _revision() -> str:
    """The checked-out commit, and whether src/ differs from it (read-only git commands)."""
    root = str(BENCH_DIR.parent)
    revision = _command_line(["git", "-C", root, "rev-parse", "--short", "HEAD"])
    if not revision:
        return "unknown"
    try:
        clean = subprocess.run(
            ["git", "-C", root, "diff", "--quiet", "HEAD", "--", "src"], timeout=10
        ).returncode
    except (OSError, subprocess.TimeoutExpired):
        return revision
    return revision if clean == 0 else f"{revision} plus uncommitted changes in src/"


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    memory_gib: float
    kernel: str
    python: str
    runc: str
    revision: str

    @classmethod
    def detect(cls) -> Machine:
        return cls(
            cpu=_cpu_model(),
            cores=os.cpu_count() or 1,
            memory_gib=_memory_gib(),
            kernel=f"{platform.system()} {platform.release()}",
            python=platform.python_version(),
            runc=_command_line(["runc", "--version"]) or "runc not found",
            revision=_revision(),
        )

    def describe(self) -> str:
        return (
            f"{self.cpu}, {self.cores} cores, {self.memory_gib:.1f} GiB, {self.kernel}; "
            f"Python {self.python}; {self.runc}; ember at {self.revision}"
        )


_TICK = os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds all cores of the machine have spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICK


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces): the
    state is [0], the parent [1], utime [11], stime [12], cutime [13], cstime [14]."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def process_cpu_s(pid: int) -> float:
    """CPU seconds a process has used itself (user and system)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICK


def _our_cpu_s() -> float:
    """CPU seconds used by this process and everything it started (the local cluster, its
    containers, Ray): each live process's own time plus that of its children it has reaped."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(entry.name)
        except OSError:
            continue  # it ended meanwhile
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        times[pid] = sum(int(x) for x in fields[11:15]) / _TICK  # utime stime cutime cstime
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo.extend(children.get(pid, ()))
    return total


class CpuMeter:
    """How busy the machine was during a benchmark: by us, and by everything else."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._machine = _machine_busy_s()
        self._ours = _our_cpu_s()

    def read(self) -> str:
        wall = max(time.monotonic() - self._started, 1e-9)
        machine = (_machine_busy_s() - self._machine) / wall
        ours = (_our_cpu_s() - self._ours) / wall
        others = max(0.0, machine - ours)
        return (
            f"CPU busy {machine:.2f} of {os.cpu_count()} cores: {ours:.2f} by the benchmark and "
            f"what it started, {others:.2f} by other work on the machine"
        )


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


# ---- the local cluster


def cluster_stub() -> object:
    """A blocking stub on the local cluster's control plane (started first if need be)."""
    import grpc

    from ember.client import local_cluster
    from ember.proto import api_pb2_grpc

    address = local_cluster.ensure_running().address
    return api_pb2_grpc.EmberStub(grpc.insecure_channel(address))


def container_count(stub: object) -> int:
    """Containers the control plane has placed on its workers (starting, running or stopping)."""
    from ember.proto import api_pb2

    status = stub.ClusterStatus(api_pb2.ClusterStatusRequest(), timeout=5.0)  # type: ignore[attr-defined]
    return sum(worker.containers for worker in status.workers)


def wait_for_containers(stub: object, count: int, timeout_s: float) -> float:
    """Wait until the cluster has exactly `count` containers; return the seconds waited."""
    started = time.monotonic()
    while True:
        if container_count(stub) == count:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise BenchTimeout(
                f"the cluster did not reach {count} containers within {timeout_s:g} s"
            )
        time.sleep(0.02)


def load_app(file_name: str) -> object:
    """Import an app file from benchmarks/apps the way `ember run` does; returns the module."""
    from ember.cli.import_file import import_app_file

    return import_app_file(str(APPS_DIR / file_name))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
