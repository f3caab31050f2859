"""What the benchmarks share: figures, percentiles, time limits, the machine, the local cluster."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

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
    loaded: str = ""  # set when other work loaded the machine while it was taken (LoadTally)

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


def _machine_times() -> tuple[float, float]:
    """CPU seconds all cores of the machine have spent busy since boot, and those the host took
    from this virtual machine for its other guests (steal), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    steal = fields[7] if len(fields) > 7 else 0
    return (sum(fields[:7]) - idle) / _TICK, steal / _TICK


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces): the
    state is [0], the parent [1], utime [11], stime [12], cutime [13], cstime [14], the start
    time in clock ticks since boot [19]."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def process_cpu_s(pid: int) -> float:
    """CPU seconds a process has used itself (user and system)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICK


@dataclass(frozen=True)
class _Process:
    parent: int
    started: int  # clock ticks since boot: with the pid, names one process even if pids recur
    cpu_s: float  # its own time and that of the children it has reaped


def _processes() -> dict[int, _Process]:
    found: dict[int, _Process] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(entry.name)
        except OSError:
            continue  # it ended meanwhile
        cpu = sum(int(x) for x in fields[11:15]) / _TICK  # utime stime cutime cstime
        found[int(entry.name)] = _Process(int(fields[1]), int(fields[19]), cpu)
    return found


_KTHREADD = 2  # the parent of every kernel thread


def _tree(processes: dict[int, _Process], root: int) -> set[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for pid, process in processes.items():
        children.setdefault(process.parent, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in processes and pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def tree_cpu_s(root: int) -> float:
    """CPU seconds used by `root` and every live process below it (with what they reaped)."""
    processes = _processes()
    return sum(processes[pid].cpu_s for pid in _tree(processes, root))


def _uptime_ticks() -> int:
    with open("/proc/uptime") as uptime:
        return int(float(uptime.read().split()[0]) * _TICK)


_OURS, _OTHERS, _KERNEL = "ours", "others", "kernel"


@dataclass(frozen=True)
class _Snapshot:
    at: float  # time.monotonic()
    ticks: int  # clock ticks since boot
    machine_s: float
    stolen_s: float
    processes: dict[int, _Process]
    kind: dict[int, str]  # pid: ours (this process's tree), others, or kernel (threads)

    @classmethod
    def take(cls) -> _Snapshot:
        at, ticks, (machine, stolen) = time.monotonic(), _uptime_ticks(), _machine_times()
        processes = _processes()
        mine = _tree(processes, os.getpid())
        kind = {}
        for pid, process in processes.items():
            if pid in mine:
                kind[pid] = _OURS
            elif pid == _KTHREADD or process.parent == _KTHREADD:
                kind[pid] = _KERNEL
            else:
                kind[pid] = _OTHERS
        return cls(at, ticks, machine, stolen, processes, kind)

    def has(self, pid: int, process: _Process) -> bool:
        here = self.processes.get(pid)
        return here is not None and here.started == process.started


def _used_between(start: _Snapshot, end: _Snapshot) -> dict[str, float]:
    """CPU seconds each kind of process used between two snapshots.

    A process's time includes its reaped children's, so: a process alive at both counts its
    growth; one born since counts all of it; one alive at the start and gone at the end counts
    nothing itself, but its time at the start is taken off whoever reaped it (its nearest
    ancestor still alive, as far as the start knew), whose children's time grew by all of it."""
    used = {_OURS: 0.0, _OTHERS: 0.0, _KERNEL: 0.0}
    for pid, process in end.processes.items():
        kind = end.kind[pid]
        if start.has(pid, process):
            used[kind] += process.cpu_s - start.processes[pid].cpu_s
        elif process.started >= start.ticks:
            used[kind] += process.cpu_s
    for pid, process in start.processes.items():
        if end.has(pid, process):
            continue
        ancestor = process.parent
        while ancestor in start.processes and not end.has(ancestor, start.processes[ancestor]):
            ancestor = start.processes[ancestor].parent
        if ancestor in start.processes:  # alive at the end: the loop stopped there
            used[end.kind[ancestor]] -= process.cpu_s
    return {kind: max(0.0, seconds) for kind, seconds in used.items()}


@dataclass(frozen=True)
class Load:
    """How busy the machine was over a stretch of time, in cores (CPU seconds per second)."""

    wall_s: float
    machine: float  # every core, from /proc/stat
    ours: float  # this process and everything it started (the cluster, its containers, Ray)
    others: float  # every other process on the machine: other work
    kernel: float  # kernel threads (I/O, loop devices, reclaim): theirs or ours, unknown
    stolen: float  # what the host gave its other guests while this machine's cores wanted to run

    @property
    def interference(self) -> float:
        """Other work: other processes here, and the host's other guests (steal)."""
        return self.others + self.stolen

    @property
    def unattributed(self) -> float:
        """Interrupts, and processes that ended before anyone counted them."""
        return max(0.0, self.machine - self.ours - self.others - self.kernel)

    def describe(self) -> str:
        return (
            f"CPU busy {self.machine:.2f} of {os.cpu_count()} cores: {self.ours:.2f} by the "
            f"benchmark and what it started, {self.others:.2f} by other work on the machine, "
            f"{self.kernel + self.unattributed:.2f} by kernel threads and interrupts; "
            f"{self.stolen:.2f} taken by the host for other guests (steal)"
        )


class CpuMeter:
    """How busy the machine was during a benchmark: by us, by other processes, by the kernel.

    "Ours" is this process's tree (what it reaped included); "other work" is every other user
    process; kernel threads and interrupts serve both, so they are shown apart and never counted
    as other work."""

    def __init__(self) -> None:
        self._start = _Snapshot.take()

    def load(self) -> Load:
        end = _Snapshot.take()
        start = self._start
        wall = max(end.at - start.at, 1e-9)
        used = _used_between(start, end)
        return Load(
            wall_s=wall,
            machine=(end.machine_s - start.machine_s) / wall,
            ours=used[_OURS] / wall,
            others=used[_OTHERS] / wall,
            kernel=used[_KERNEL] / wall,
            stolen=(end.stolen_s - start.stolen_s) / wall,
        )

    def read(self) -> str:
        return self.load().describe()


# ---- other work on the machine: rerun what it loaded, flag what stays loaded


@dataclass
class LoadPolicy:
    """A step during which other work (other processes, and the host's steal) took more than
    `threshold` cores is taken again, up to `reruns` times; if every try was loaded, the least loaded one is kept and its rows are
    flagged."""

    threshold: float = 0.25
    reruns: int = 2


LOAD_POLICY = LoadPolicy()  # benchmarks.run sets it from its options


T = TypeVar("T")


@dataclass(frozen=True)
class Tried(Generic[T]):
    """What a guarded step produced (its least loaded try), with the load of each try."""

    value: T
    load: Load
    others: tuple[float, ...]  # other work during each try, in order (cores)
    threshold: float

    @property
    def loaded(self) -> bool:
        return self.load.interference > self.threshold


def guarded(what: str, body: Callable[[], T], policy: LoadPolicy | None = None) -> Tried[T]:
    """Run `body`, and again while other work took more than the policy's threshold meanwhile,
    at most `reruns` more times; the least loaded try is kept. `body` returns what it measured
    and keeps no state of its own across tries."""
    policy = policy or LOAD_POLICY
    best: tuple[T, Load] | None = None
    others: list[float] = []
    for attempt in range(policy.reruns + 1):
        meter = CpuMeter()
        value = body()
        load = meter.load()
        others.append(load.interference)
        if best is None or load.interference < best[1].interference:
            best = (value, load)
        if load.interference <= policy.threshold:
            break
        again = "taken again" if attempt < policy.reruns else "kept (no tries left), flagged"
        log(
            f"  {what}: {load.interference:.2f} cores of other work meanwhile "
            f"({load.stolen:.2f} of them the host's steal): {again}"
        )
    assert best is not None
    return Tried(best[0], best[1], tuple(others), policy.threshold)


@dataclass
class LoadTally:
    """The guarded steps behind one set of rows: how many were taken again, how many stayed
    loaded, and the flag their rows carry."""

    tries: list[Tried[Any]] = field(default_factory=list)

    def add(self, tried: Tried[T]) -> T:
        self.tries.append(tried)
        return tried.value

    def extend(self, other: LoadTally) -> None:
        self.tries.extend(other.tries)

    @property
    def loaded(self) -> list[Tried[Any]]:
        return [t for t in self.tries if t.loaded]

    def flag(self) -> str:
        """'' when every step ended clean, else e.g. 'loaded: 0.61 cores of other work (2 of
        10 samples)'."""
        loaded = self.loaded
        if not loaded:
            return ""
        worst = max(t.load.interference for t in loaded)
        text = f"loaded: {worst:.2f} cores of other work"
        if len(self.tries) > 1:
            text += f" ({len(loaded)} of {len(self.tries)} steps)"
        return text

    def summary(self) -> str:
        """What the guard did, for the details."""
        if not self.tries:
            return "no steps"
        again = sum(len(t.others) - 1 for t in self.tries)
        others = [t.load.interference for t in self.tries]
        threshold = self.tries[0].threshold
        return (
            f"{len(self.tries)} steps, other work p50 {percentile(others, 50):.2f} max "
            f"{max(others):.2f} cores (threshold {threshold:g}); {again} tries taken again; "
            f"{len(self.loaded)} still over the threshold after every try"
        )


def flag_figures(figures: Sequence[Figure], tally: LoadTally) -> None:
    """Mark figures whose steps stayed loaded."""
    text = tally.flag()
    if text:
        for figure in figures:
            figure.loaded = text


def wait_until_quiet(window_s: float = 0.1, max_cores: float = 0.1, limit_s: float = 5.0) -> float:
    """Wait until what this process started (the cluster, its containers) has used under
    `max_cores` for `window_s` (a container just removed, a standby just started, have settled),
    at most `limit_s`; the seconds waited."""
    started = time.monotonic()
    while True:
        before = _descendants_cpu_s()
        time.sleep(window_s)
        used = _descendants_cpu_s() - before
        if used < max_cores * window_s or time.monotonic() - started > limit_s:
            return time.monotonic() - started


def _descendants_cpu_s() -> float:
    """CPU seconds of every live process below this one (not this one itself)."""
    processes = _processes()
    me = os.getpid()
    return sum(processes[pid].cpu_s for pid in _tree(processes, me) if pid != me)


# ---- what served a cold start


STANDBY = "standby"
FRESH = "fresh"


def served_by(hostname: str) -> str:
    """What started the container that ran a sample, from its hostname: the worker names a
    standby `sb-…` and a container started for its function by its control-plane id, `ta-…`."""
    if hostname.startswith("sb-"):
        return STANDBY
    if hostname.startswith("ta-"):
        return FRESH
    return f"unknown ({hostname})"


SERVED_LABEL = {STANDBY: "standby", FRESH: "no standby: fresh runc"}


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
