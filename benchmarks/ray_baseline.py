"""Ray side by side: the same no-op round trip and fan-out on `ray.init(num_cpus=2)`.

Run in a process of its own (`python -m benchmarks.ray_baseline`), before any ember benchmark, so
Ray's daemons are gone before ember's cluster works; it prints one JSON object on its last line of
stdout. `run()` starts that process from the suite, with a time limit, and reads the object.

- round trip: `ray.get(noop.remote())`, `calls` sequential calls after `warmup`, each timed.
- fan-out: `ray.get([noop.remote() for _ in range(tasks)])`, after a smaller untimed fan-out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

from benchmarks.common import BENCH_DIR, Outcome, log, percentile, summary_ms

NUM_CPUS = 2


def available() -> str:
    """Empty if Ray can be imported here, else why not."""
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed (pip install 'ray[default]', or the `bench` extra)"
    return ""


def run(calls: int, warmup: int, tasks: int, limit_s: float) -> tuple[Outcome, dict[str, float]]:
    """Run the Ray baseline in a child process; RuntimeError if Ray could not run."""
    outcome = Outcome("Ray baseline")
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
    for line in result.pop("lines", []):
        log(f"  {line}")
        outcome.details.append(line)
    outcome.details.append(
        "Ray's daemons are killed at shutdown without the driver reaping them all, so the CPU "
        "split for this step may count part of Ray's own time as other work"
    )
    return outcome, result


# ---- the child process


def _measure(calls: int, warmup: int, tasks: int) -> dict[str, object]:
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=NUM_CPUS, logging_level="ERROR", log_to_driver=False)
    init_s = time.perf_counter() - started
    try:

        @ray.remote
        def noop() -> None:
            return None

        for _ in range(warmup):
            ray.get(noop.remote())
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            ray.get(noop.remote())
            samples.append(time.perf_counter() - started)

        ray.get([noop.remote() for _ in range(min(tasks, 1000))])  # warm the workers
        started = time.perf_counter()
        results = ray.get([noop.remote() for _ in range(tasks)])
        fanout_s = time.perf_counter() - started
        assert len(results) == tasks
        version = ray.__version__
    finally:
        ray.shutdown()
    return {
        "rtt_p50_ms": percentile(samples, 50) * 1000,
        "rtt_p99_ms": percentile(samples, 99) * 1000,
        "fanout_per_s": tasks / fanout_s,
        "lines": [
            f"Ray {version}, ray.init(num_cpus={NUM_CPUS}) took {init_s:.2f} s",
            f"Ray round trips: {summary_ms(samples)}",
            f"Ray fan-out: {tasks} tasks in {fanout_s:.3f} s = {tasks / fanout_s:.0f} tasks/s",
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--limit", type=float, default=300.0)
    args = parser.parse_args()

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"the Ray baseline ran past {args.limit:g} s")

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, args.limit)
    try:
        result = _measure(args.calls, args.warmup, args.tasks)
    except Exception as error:
        result = {"error": f"{type(error).__name__}: {error}"}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
