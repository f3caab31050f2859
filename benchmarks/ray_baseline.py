"""Ray side by side: the same no-op round trip and fan-out on `ray.init(num_cpus=2)`.

One block of Ray runs in a process of its own (`python -m benchmarks.ray_baseline`): `ray.init`,
the measurements, `ray.shutdown`, so Ray's daemons are gone before ember's next block works; it
prints one JSON object on its last line of stdout. `run()` starts that process from the suite,
with a time limit, and reads the object; `benchmarks.versus_ray` takes Ray's blocks and ember's
in turn.

- round trip: `ray.get(noop.remote())`, `calls` sequential calls after `warmup`, each timed.
- fan-out: `ray.get([noop.remote() for _ in range(tasks)])`, after a smaller untimed fan-out.

The child makes itself a subreaper (PR_SET_CHILD_SUBREAPER) and reaps every process Ray leaves
once `ray.shutdown()` returns: Ray's daemons end without the driver waiting for them, and a
process that init reaps takes its CPU time out of the benchmark's tree, where the load meter
would have counted it as other work on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import BENCH_DIR, log, percentile, summary_ms

NUM_CPUS = 2
REAP_TIMEOUT_S = 20.0
_PR_SET_CHILD_SUBREAPER = 36


def available() -> str:
    """Empty if Ray can be imported here, else why not."""
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed (pip install 'ray[default]', or the `bench` extra)"
    return ""


def run(calls: int, warmup: int, tasks: int, limit_s: float) -> dict[str, Any]:
    """One block of Ray (round trips if `calls`, a fan-out if `tasks`) in a child process: its
    samples (`rtt_s`, `fanout_s`, `tasks`) and `lines` for the details. RuntimeError if Ray
    could not run."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.ray_baseline",
        f"--calls={calls}",
        f"--warmup={warmup}",
        f"--tasks={tasks}",
        f"--limit={limit_s}",
    ]
    process = subprocess.Popen(
        command,
        cwd=BENCH_DIR.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=limit_s + 60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise RuntimeError(f"the Ray baseline ran past {limit_s + 60:g} s and was killed") from None
    lines = stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise RuntimeError(
            f"the Ray baseline exited with code {process.returncode} and no result:\n{tail}"
        ) from None
    if "error" in result:
        raise RuntimeError(f"Ray failed: {result['error']}")
    for line in result.get("lines", []):
        log(f"  {line}")
    return result


# ---- the child process


def _measure(calls: int, warmup: int, tasks: int) -> dict[str, object]:
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=NUM_CPUS, logging_level="ERROR", log_to_driver=False)
    init_s = time.perf_counter() - started
    samples: list[float] = []
    fanout_s = 0.0
    try:

        @ray.remote
        def noop() -> None:
            return None

        if calls:
            for _ in range(warmup):
                ray.get(noop.remote())
            for _ in range(calls):
                started = time.perf_counter()
                ray.get(noop.remote())
                samples.append(time.perf_counter() - started)
        if tasks:
            ray.get([noop.remote() for _ in range(min(tasks, 1000))])  # warm the workers
            started = time.perf_counter()
            results = ray.get([noop.remote() for _ in range(tasks)])
            fanout_s = time.perf_counter() - started
            assert len(results) == tasks
        version = ray.__version__
    finally:
        ray.shutdown()
    lines = [f"Ray {version}, ray.init(num_cpus={NUM_CPUS}) took {init_s:.2f} s"]
    if samples:
        lines.append(f"Ray round trips: {summary_ms(samples)}")
    if tasks:
        lines.append(
            f"Ray fan-out: {tasks} tasks in {fanout_s:.3f} s = {tasks / fanout_s:.0f} tasks/s"
        )
    return {
        "rtt_s": samples,
        "rtt_p50_ms": percentile(samples, 50) * 1000 if samples else None,
        "fanout_s": fanout_s,
        "tasks": tasks,
        "lines": lines,
    }


def _reap_all(timeout_s: float) -> int:
    """Wait for every process left below this one (this process is their subreaper); those
    still alive after `timeout_s` are killed first. How many were reaped."""
    reaped = 0
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid:
            reaped += 1
            continue
        if time.monotonic() > deadline:
            for child in _children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            deadline = time.monotonic() + timeout_s
        time.sleep(0.05)


def _children() -> list[int]:
    me = str(os.getpid())
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as stat:
                    if stat.read().rsplit(")", 1)[1].split()[1] == me:
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--limit", type=float, default=300.0)
    args = parser.parse_args()

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"the Ray baseline ran past {args.limit:g} s")

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1)
    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, args.limit)
    try:
        result = _measure(args.calls, args.warmup, args.tasks)
    except Exception as error:
        result = {"error": f"{type(error).__name__}: {error}"}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    result["reaped"] = _reap_all(REAP_TIMEOUT_S)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
