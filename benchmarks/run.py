"""ember's benchmarks: `python -m benchmarks.run [--quick] [--only ray,warm,fanout,cold,isolation,image]`.

    ray        the Ray baseline (`ray.init(num_cpus=2)`), taken in turn with warm and fanout;
               skipped if Ray is missing
    warm       .remote() of a no-op on a warm container: p50 and p99 (baseline: Ray)
    fanout     no-op inputs through .map on two warm containers: inputs/s (baseline: Ray)
    cold       .remote() on a function with no container, to user code and to the result, with
               the worker's standby containers on and off, each row saying which served it
               (baseline: `runc run` of `python3 -c pass` on the same root file system, a run
               taken with each sample); and what the containers' isolation costs a start, step
               by step, each part on and off (benchmarks/isolation_steps.py)
    isolation  the warm round trip, the fan-out and cold starts on this checkout and on the code
               before the isolation commit, blocks taken in turn (benchmarks/isolation.py)
    image      a ~1 GB torch image served lazily by imagefs from S3 over a 1 GB/s link: cold start on
               an empty and on a warm host, bytes fetched, rebuild, steady reads, a small image
               (baselines: pulling the whole image first, and `runc run` on a local tree)

Ray runs in blocks in a process of its own (`ray.init` to `ray.shutdown`), in turn with ember's
blocks (Ray, ember, ember, Ray with the default two repeats); ember's cluster stays up, idle,
meanwhile. The ember benchmarks use a local cluster in a fresh data directory (removed
afterwards) that shares the machine's image cache, so the base image is built once per machine;
the cluster is stopped at the end whatever happens. Every loop is bounded and every benchmark has
a time limit.

Other work on the machine: each step (a block, or a cold-start sample with its floor run) is
metered (`common.CpuMeter`: this process's tree, other processes, kernel threads, and the time
the host took for its other guests, steal); a step during which other processes and steal took
more than `--load-threshold` cores (0.25) is taken again, up to
`--reruns` times (2), and the least loaded try kept; rows whose steps stayed loaded carry
"[loaded: N cores of other work]" in their name.

A table is printed at the end, and the same figures are appended to benchmarks/RESULTS.md with the
machine they ran on (a --quick run writes there only with --write-results; --no-results never).

`isolation` and `image` run after the shared cluster is stopped, each with clusters of its own
(benchmarks/isolation.py and benchmarks/image_coldstart.py say why); the image benchmark's first
build of the torch image takes a few minutes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks import common
from benchmarks.common import (
    BENCH_DIR,
    BenchTimeout,
    CpuMeter,
    Figure,
    Machine,
    Outcome,
    cluster_stub,
    load_average,
    log,
    time_limit,
    wait_for_containers,
)
from benchmarks.isolation import BlockSizes

BENCHMARKS = ("ray", "warm", "fanout", "cold", "isolation", "image")
DEFAULT_IMAGE_DIR = "~/.local/share/ember/images"
RESULTS_FILE = BENCH_DIR / "RESULTS.md"
DRAIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Sizes:
    calls: int
    warmup: int
    inputs: int
    fanout_warmup: int
    cold_samples: int
    limit_s: float  # per benchmark
    image_samples: int
    image_limit_s: float  # the image benchmark's own: it builds a 1 GB image first
    repeats: int  # rounds of ember's and Ray's blocks, and of the isolation's before and after
    breakdown_samples: int  # rounds of the isolation breakdown's variants

    def isolation_block(self) -> BlockSizes:
        """One block of the isolation benchmark: with `repeats` blocks a side, about the sizes
        of the warm, fan-out and cold benchmarks in all."""
        share = max(1, self.repeats)
        return BlockSizes(
            calls=max(10, self.calls // share),
            warmup=self.warmup,
            inputs=max(100, self.inputs // share),
            fanout_warmup=self.fanout_warmup,
            cold_samples=max(2, self.cold_samples // share),
            limit_s=self.limit_s,
        )


FULL = Sizes(
    calls=500,
    warmup=50,
    inputs=10_000,
    fanout_warmup=500,
    cold_samples=20,
    limit_s=300.0,
    image_samples=10,
    image_limit_s=2400.0,
    repeats=2,
    breakdown_samples=20,
)
QUICK = Sizes(
    calls=100,
    warmup=20,
    inputs=1_000,
    fanout_warmup=100,
    cold_samples=5,
    limit_s=120.0,
    image_samples=3,
    image_limit_s=1500.0,
    repeats=2,
    breakdown_samples=3,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Run ember's benchmarks and append the figures to benchmarks/RESULTS.md.",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run (small sizes)")
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated benchmarks to run, from: {', '.join(BENCHMARKS)} (default: all)",
    )
    parser.add_argument("--calls", type=int, help="timed warm round trips a block (500; quick 100)")
    parser.add_argument("--inputs", type=int, help="fan-out inputs a block (10000; quick 1000)")
    parser.add_argument("--cold-samples", type=int, help="cold-start samples a row (20; quick 5)")
    parser.add_argument(
        "--image-samples", type=int, help="image benchmark samples per figure (10; quick 3)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="rounds of ember's and Ray's blocks, and of the isolation's sides (2)",
    )
    parser.add_argument(
        "--breakdown-samples", type=int, help="rounds of the isolation breakdown (20; quick 3)"
    )
    parser.add_argument(
        "--before",
        help="the revision the isolation benchmark measures as before (default: the parent of "
        "the commit that added src/ember/container/userns.py)",
    )
    parser.add_argument(
        "--load-threshold",
        type=float,
        default=common.LOAD_POLICY.threshold,
        help="cores of other work above which a step is taken again, then flagged (0.25)",
    )
    parser.add_argument(
        "--reruns",
        type=int,
        default=common.LOAD_POLICY.reruns,
        help="how many times a loaded step is taken again (2)",
    )
    parser.add_argument(
        "--no-new-app",
        action="store_true",
        help="measure cold starts only on a function scaled to zero, not on a new app per sample",
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS_FILE, help="the Markdown file to append to"
    )
    write = parser.add_mutually_exclusive_group()
    write.add_argument("--write-results", action="store_true", help="append even for --quick")
    write.add_argument("--no-results", action="store_true", help="do not append to the file")
    parser.add_argument(
        "--keep-data", action="store_true", help="keep the run's data directory (its logs)"
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown or not chosen:
        parser.error(f"--only takes names from {', '.join(BENCHMARKS)}; got {args.only!r}")
    args.chosen = [name for name in BENCHMARKS if name in chosen]
    base = QUICK if args.quick else FULL
    args.sizes = Sizes(
        calls=args.calls or base.calls,
        warmup=base.warmup,
        inputs=args.inputs or base.inputs,
        fanout_warmup=base.fanout_warmup,
        cold_samples=args.cold_samples or base.cold_samples,
        limit_s=base.limit_s,
        image_samples=args.image_samples or base.image_samples,
        image_limit_s=base.image_limit_s,
        repeats=args.repeats or base.repeats,
        breakdown_samples=(
            base.breakdown_samples if args.breakdown_samples is None else args.breakdown_samples
        ),
    )
    common.LOAD_POLICY.threshold = args.load_threshold
    common.LOAD_POLICY.reruns = max(0, args.reruns)
    return args


def prepare_environment(keep_data: bool) -> Path:
    """Point ember at a fresh data directory of our own and at the machine's image cache.

    Must run before ember is imported anywhere in this process.
    """
    if "ember" in sys.modules:
        raise RuntimeError("prepare_environment() must run before ember is imported")
    if os.environ.pop("EMBER_SERVER_URL", None):
        log("note: EMBER_SERVER_URL is ignored; the benchmarks run on a local cluster of their own")
    if os.environ.pop("EMBER_STANDBY_CONTAINERS", None) is not None:
        log("note: EMBER_STANDBY_CONTAINERS is ignored; the cold starts are taken with and without")
    os.environ.setdefault("EMBER_IMAGE_DIR", str(Path(DEFAULT_IMAGE_DIR).expanduser()))
    data_dir = Path(tempfile.mkdtemp(prefix="ember-bench-"))
    os.environ["EMBER_DATA_DIR"] = str(data_dir)
    log(f"data directory: {data_dir}{' (kept)' if keep_data else ''}")
    log(f"image directory: {os.environ['EMBER_IMAGE_DIR']}")
    return data_dir


def start_cluster() -> str:
    """Build the base image if this machine has none, then start the local cluster."""
    from ember.builder import ensure_base_image
    from ember.client import local_cluster

    started = time.perf_counter()
    ensure_base_image()
    image_s = time.perf_counter() - started
    started = time.perf_counter()
    local_cluster.ensure_running()
    return f"base image ready in {image_s:.1f} s; local cluster started in {time.perf_counter() - started:.1f} s"


def stop_cluster(data_dir: Path, keep_data: bool) -> None:
    import asyncio

    from ember.client import local_cluster
    from ember.container import RuncRuntime
    from ember.container.overlay import mounts_under

    if local_cluster.running() is not None:
        # Let the containers of the apps just stopped go first: a worker stopped while it
        # removes a container can leave that container's mount and cgroup behind.
        try:
            wait_for_containers(cluster_stub(), 0, DRAIN_TIMEOUT_S)
        except Exception as error:
            log(f"warning: containers still up before stopping the cluster: {error}")
    try:
        local_cluster.stop()
    except Exception as error:
        log(f"warning: stopping the local cluster failed: {error}")
    # Whatever a container left on the host (as the worker itself does when it starts again).
    image = data_dir / "image"
    for state in (
        data_dir / "worker" / "runtime",
        data_dir / "floor" / "breakdown",
        data_dir / "floor",
        data_dir / "isolation" / "before" / "worker" / "runtime",
        data_dir / "isolation" / "after" / "worker" / "runtime",
        image / "cluster" / "worker" / "runtime",
        image / "runc",
    ):
        if state.exists():
            try:
                removed = asyncio.run(RuncRuntime(state).cleanup_stale())
            except Exception as error:
                log(f"warning: cleaning up containers under {state.name} failed: {error}")
            else:
                if removed:
                    log(f"warning: removed containers left behind: {', '.join(removed)}")
    if keep_data:
        return
    if mounts_under(data_dir):
        log(f"warning: {data_dir} still has mounts under it; left in place")
        return
    shutil.rmtree(data_dir, ignore_errors=True)


def run_benchmarks(args: argparse.Namespace, data_dir: Path) -> list[Outcome]:
    from benchmarks import image_coldstart, isolation

    sizes: Sizes = args.sizes
    outcomes: list[Outcome] = []

    def attempt(name: str, body: Callable[[], Outcome | list[Outcome]], limit_s: float) -> None:
        log(f"== {name}")
        started = time.perf_counter()
        meter = CpuMeter()
        try:
            with time_limit(limit_s, name):
                produced = body()
        except Exception as error:
            log(f"  {name} failed: {type(error).__name__}: {error}")
            if not isinstance(error, RuntimeError | TimeoutError | BenchTimeout):
                traceback.print_exc()
            produced = Outcome(name, skipped=f"failed: {type(error).__name__}: {error}")
        made = produced if isinstance(produced, list) else [produced]
        seconds, cpu = time.perf_counter() - started, meter.read()
        log(f"  {seconds:.1f} s; {cpu}")
        if len(made) > 1:  # one step's meter for several outcomes: said once, for all of them
            cpu += f" (the whole step: {', '.join(o.name for o in made)})"
        for number, outcome in enumerate(made):
            outcome.seconds = seconds
            outcome.cpu = cpu if number == 0 else ""
        outcomes.extend(made)

    if any(name in args.chosen for name in ("ray", "warm", "fanout", "cold")):
        run_shared_cluster(args, data_dir, attempt)
    from ember.client import local_cluster

    if local_cluster.running() is not None and (
        "isolation" in args.chosen or "image" in args.chosen
    ):
        log("== stopping the shared cluster: the benchmarks after it bring their own")
        stop_shared_cluster()
    if "isolation" in args.chosen:
        block = sizes.isolation_block()
        # Each side: a cluster start, and `repeats` blocks of warm, fan-out and cold starts.
        limit = 600 + sizes.repeats * 2 * (3 * sizes.limit_s) * (common.LOAD_POLICY.reruns + 1)
        attempt(
            "isolation, before and after",
            lambda: isolation.run(args.before, block, sizes.repeats, data_dir / "isolation"),
            limit,
        )
    if "image" in args.chosen:
        attempt(
            "image cold start",
            lambda: image_coldstart.run(
                sizes.image_samples, sizes.image_limit_s, data_dir / "image"
            ),
            sizes.image_limit_s + 300,
        )
    return outcomes


def stop_shared_cluster() -> None:
    """Stop the warm/fanout/cold benchmarks' cluster once its containers have gone."""
    from ember.client import local_cluster

    try:
        wait_for_containers(cluster_stub(), 0, DRAIN_TIMEOUT_S)
    except Exception as error:
        log(f"warning: containers still up before stopping the cluster: {error}")
    local_cluster.stop()


def run_shared_cluster(
    args: argparse.Namespace, data_dir: Path, attempt: Callable[..., None]
) -> None:
    """The benchmarks that share one local cluster: Ray's blocks with warm and fanout, cold."""
    from benchmarks import cold_start, versus_ray

    sizes: Sizes = args.sizes
    chosen = set(args.chosen)
    if chosen & {"warm", "fanout", "cold"}:
        log("== starting ember's local cluster")
        log(f"  {start_cluster()}")
    if chosen & {"ray", "warm", "fanout"}:
        titles = (("ray", "Ray"), ("warm", "warm round trip"), ("fanout", "fan-out"))
        names = [title for name, title in titles if name in chosen]
        # Every block may be taken reruns + 1 times; ember's blocks are two loops each.
        tries = common.LOAD_POLICY.reruns + 1
        limit = 120 + sizes.repeats * 3 * sizes.limit_s * tries
        attempt(
            ", ".join(names) + ", blocks in turn",
            lambda: versus_ray.run(
                "warm" in chosen,
                "fanout" in chosen,
                "ray" in chosen,
                sizes.calls,
                sizes.warmup,
                sizes.inputs,
                sizes.fanout_warmup,
                sizes.repeats,
                sizes.limit_s,
            ),
            limit,
        )
    if "cold" in chosen:
        attempt(
            "cold start",
            lambda: cold_start.run(
                sizes.cold_samples,
                sizes.limit_s * 2,
                data_dir / "floor",
                not args.no_new_app,
                sizes.breakdown_samples,
            ),
            sizes.limit_s * 3 + 300,
        )


# ---- reporting


def _number(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"
    return f"{value:,.0f} {unit}"


def _row(figure: Figure) -> list[str]:
    name = figure.name
    if figure.note:
        name += f" [{figure.note}]"
    if figure.loaded:
        name += f" [{figure.loaded}]"
    value = "—" if figure.value is None else _number(figure.value, figure.unit)
    if figure.baseline is None:
        baseline = figure.baseline_name or "—"
    else:
        baseline = f"{figure.baseline_name} {_number(figure.baseline, figure.unit)}"
    ratio = "—" if figure.ratio is None else f"{figure.ratio:.2f}"
    met = "" if figure.met is None else ("yes" if figure.met else "NO")
    return [name, value, baseline, ratio, figure.target, met]


HEADER = ["benchmark", "ember", "baseline (same run)", "ember ÷ baseline", "target", "met"]


def table_text(outcomes: list[Outcome]) -> str:
    rows = [HEADER] + [_row(f) for o in outcomes for f in o.figures]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append("")
    for outcome in outcomes:
        if outcome.cpu:
            lines.append(f"{outcome.name}: {outcome.seconds:.0f} s; {outcome.cpu}")
    for outcome in outcomes:
        if outcome.skipped:
            lines.append(f"{outcome.name}: {outcome.skipped}")
    return "\n".join(lines)


def table_markdown(outcomes: list[Outcome]) -> str:
    rows = [_row(f) for o in outcomes for f in o.figures]
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def run_kind(args: argparse.Namespace) -> str:
    kind = "quick run" if args.quick else "full run"
    if len(args.chosen) < len(BENCHMARKS):
        kind += f" of {', '.join(args.chosen)} only"
    return kind


def results_section(
    outcomes: list[Outcome],
    args: argparse.Namespace,
    machine: Machine,
    load_before: str,
    load_after: str,
    started_at: datetime.datetime,
    total_s: float,
) -> str:
    kind = run_kind(args)
    sizes: Sizes = args.sizes
    lines = [
        f"## {started_at:%Y-%m-%d %H:%M} UTC, {kind}",
        "",
        f"- Machine: {machine.describe()}",
        f"- Load average before: {load_before}; after: {load_after}",
        f"- Sizes: {sizes.calls} round trips after {sizes.warmup} warm-up calls and "
        f"{sizes.inputs} fan-out inputs in each of {sizes.repeats} blocks a side, taken in turn "
        f"with Ray's; {sizes.cold_samples} cold-start samples per row (each with a runc floor run "
        f"taken just before it); {sizes.breakdown_samples} rounds of the isolation breakdown; "
        f"{sizes.image_samples} samples per image figure; {total_s:.0f} s in all",
        f"- Other work: a step during which other processes and the host's steal took more than "
        f"{common.LOAD_POLICY.threshold:g} cores was taken again, up to "
        f"{common.LOAD_POLICY.reruns} times; {_loaded_count(outcomes)}",
        "- Ratios are ember ÷ baseline: below 1 is better for times, above 1 for rates.",
        "",
        table_markdown(outcomes),
        "",
    ]
    notes = [f"- {o.name}: {o.seconds:.0f} s; {o.cpu}" for o in outcomes if o.cpu]
    notes += [f"- {o.name}: {detail}" for o in outcomes for detail in o.details]
    notes += [f"- {o.name}: {o.skipped}" for o in outcomes if o.skipped]
    if notes:
        lines += ["Details:", "", *notes, ""]
    return "\n".join(lines) + "\n"


def _loaded_count(outcomes: list[Outcome]) -> str:
    figures = [f for o in outcomes for f in o.figures]
    loaded = [f for f in figures if f.loaded]
    if not loaded:
        return "every row ended clean"
    return f"{len(loaded)} of {len(figures)} rows stayed loaded (marked [loaded: ...]): take them again"


def append_results(path: Path, section: str) -> None:
    if not path.exists() or not path.read_text().strip():
        path.write_text(
            "# Benchmark results\n\n"
            "Appended by `python -m benchmarks.run` (`make bench`), one section per run, newest "
            "last. Each figure sits beside its baseline measured in the same run on the same "
            "machine.\n\n"
        )
    with path.open("a") as file:
        file.write(section + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = datetime.datetime.now(datetime.UTC)
    started = time.perf_counter()
    machine = Machine.detect()
    load_before = load_average()
    log(f"machine: {machine.describe()}")
    log(f"load average: {load_before}")
    data_dir = prepare_environment(args.keep_data)
    outcomes: list[Outcome] = []
    try:
        outcomes = run_benchmarks(args, data_dir)
    finally:
        log("== stopping ember's local cluster")
        stop_cluster(data_dir, args.keep_data)
    total_s = time.perf_counter() - started
    load_after = load_average()
    print()
    print(f"ember benchmarks, {run_kind(args)} ({total_s:.0f} s)")
    print(f"machine: {machine.describe()}")
    print(f"load average before: {load_before}; after: {load_after}")
    print()
    print(table_text(outcomes))
    write = args.write_results or (not args.quick and not args.no_results)
    if write and any(o.figures for o in outcomes):
        section = results_section(
            outcomes, args, machine, load_before, load_after, started_at, total_s
        )
        append_results(args.results, section)
        print(f"\nappended to {args.results}")
    print(f"\nother work: {_loaded_count(outcomes)}")
    # Ray missing or failing is a skipped baseline, not a failed run.
    failed = [o for o in outcomes if o.skipped and o.name != "Ray baseline"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
