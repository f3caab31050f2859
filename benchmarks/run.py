"""ember's benchmarks: `python -m benchmarks.run [--quick] [--only warm,fanout,cold,image,ray]`.

    warm     .remote() of a no-op on a warm container: p50 and p99 (baseline: Ray)
    fanout   no-op inputs through .map on two warm containers: inputs/s (baseline: Ray)
    cold     .remote() on a function with no container, to user code and to the result
             (baseline: `runc run` of `python3 -c pass` on the same root file system)
    image    a ~1 GB torch image served lazily by imagefs from S3 over a 1 GB/s link: cold start on
             an empty and on a warm host, bytes fetched, rebuild, steady reads, a small image
             (baselines: pulling the whole image first, and `runc run` on a local tree)
    ray      the Ray baseline itself (`ray.init(num_cpus=2)`); skipped if Ray is missing

Ray runs first, in a process of its own, and is shut down before ember's cluster starts: the
two would compete for the same cores. The ember benchmarks use a local cluster in a fresh data
directory (removed afterwards) that shares the machine's image cache, so the base image is built
once per machine; the cluster is stopped at the end whatever happens. Every loop is bounded and
every benchmark has a time limit. A table is printed at the end, and the same figures are
appended to benchmarks/RESULTS.md with the machine they ran on (a --quick run writes there only
with --write-results).

`image` runs last, after the shared cluster is stopped, in a process of its own with a cluster of
its own (benchmarks/image_coldstart.py says why); its first build of the torch image takes a few
minutes.
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

BENCHMARKS = ("ray", "warm", "fanout", "cold", "image")
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


FULL = Sizes(
    calls=500,
    warmup=50,
    inputs=10_000,
    fanout_warmup=500,
    cold_samples=20,
    limit_s=300.0,
    image_samples=10,
    image_limit_s=2400.0,
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
    parser.add_argument("--calls", type=int, help="timed warm round trips (500; quick 100)")
    parser.add_argument("--inputs", type=int, help="fan-out inputs (10000; quick 1000)")
    parser.add_argument("--cold-samples", type=int, help="cold-start samples (20; quick 5)")
    parser.add_argument(
        "--image-samples", type=int, help="image benchmark samples per figure (10; quick 3)"
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
    )
    return args


def prepare_environment(keep_data: bool) -> Path:
    """Point ember at a fresh data directory of our own and at the machine's image cache.

    Must run before ember is imported anywhere in this process.
    """
    if "ember" in sys.modules:
        raise RuntimeError("prepare_environment() must run before ember is imported")
    if os.environ.pop("EMBER_SERVER_URL", None):
        log("note: EMBER_SERVER_URL is ignored; the benchmarks run on a local cluster of their own")
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
        data_dir / "floor",
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
    from benchmarks import image_coldstart, ray_baseline

    sizes: Sizes = args.sizes
    outcomes: list[Outcome] = []
    ray: dict[str, float] | None = None
    ray_note = "Ray not run"

    def attempt(name: str, body: object, limit_s: float = sizes.limit_s + 120) -> Outcome | None:
        log(f"== {name}")
        started = time.perf_counter()
        meter = CpuMeter()
        try:
            with time_limit(limit_s, name):
                outcome = body()  # type: ignore[operator]
        except Exception as error:
            log(f"  {name} failed: {type(error).__name__}: {error}")
            if not isinstance(error, RuntimeError | TimeoutError | BenchTimeout):
                traceback.print_exc()
            outcome = Outcome(name, skipped=f"failed: {type(error).__name__}: {error}")
        outcome.seconds = time.perf_counter() - started
        outcome.cpu = meter.read()
        log(f"  {outcome.seconds:.1f} s; {outcome.cpu}")
        outcomes.append(outcome)
        return outcome

    if "ray" in args.chosen:
        why_not = ray_baseline.available()
        if why_not:
            log(f"== Ray baseline: skipped, {why_not}")
            ray_note = "Ray not installed"
            outcomes.append(Outcome("Ray baseline", skipped=why_not))
        else:
            holder: dict[str, dict[str, float]] = {}

            def ray_body() -> Outcome:
                outcome, result = ray_baseline.run(
                    sizes.calls, sizes.warmup, sizes.inputs, sizes.limit_s
                )
                holder["result"] = result
                return outcome

            attempt("Ray baseline", ray_body)
            ray = holder.get("result")
            if ray is None:
                ray_note = "Ray failed"
                log("  Ray could not run; the ember benchmarks go on without it")

    ember_chosen = [name for name in args.chosen if name not in ("ray", "image")]
    if ember_chosen:
        run_shared_cluster(args, data_dir, ember_chosen, attempt, ray, ray_note)
    if "image" in args.chosen:
        from ember.client import local_cluster

        if local_cluster.running() is not None:
            log("== stopping the shared cluster: the image benchmark brings its own")
            stop_shared_cluster()
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
    args: argparse.Namespace,
    data_dir: Path,
    ember_chosen: list[str],
    attempt: Callable[..., Outcome | None],
    ray: dict[str, float] | None,
    ray_note: str,
) -> None:
    """The benchmarks that share one local cluster: warm, fanout, cold."""
    from benchmarks import cold_start, fanout, warm_roundtrip

    sizes: Sizes = args.sizes
    log("== starting ember's local cluster")
    log(f"  {start_cluster()}")
    if "warm" in ember_chosen:
        attempt(
            "warm round trip",
            lambda: warm_roundtrip.run(sizes.calls, sizes.warmup, sizes.limit_s, ray, ray_note),
        )
    if "fanout" in ember_chosen:
        attempt(
            "fan-out",
            lambda: fanout.run(sizes.inputs, sizes.fanout_warmup, sizes.limit_s, ray, ray_note),
        )
    if "cold" in ember_chosen:
        attempt(
            "cold start",
            lambda: cold_start.run(
                sizes.cold_samples, sizes.limit_s, data_dir / "floor", not args.no_new_app
            ),
        )


# ---- reporting


def _number(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"
    return f"{value:,.0f} {unit}"


def _row(figure: Figure) -> list[str]:
    value = "—" if figure.value is None else _number(figure.value, figure.unit)
    if figure.baseline is None:
        baseline = figure.baseline_name or "—"
    else:
        baseline = f"{figure.baseline_name} {_number(figure.baseline, figure.unit)}"
    ratio = "—" if figure.ratio is None else f"{figure.ratio:.2f}"
    met = "" if figure.met is None else ("yes" if figure.met else "NO")
    return [figure.name, value, baseline, ratio, figure.target, met]


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
        f"- Sizes: {sizes.calls} round trips after {sizes.warmup} warm-up calls; "
        f"{sizes.inputs} fan-out inputs; {sizes.cold_samples} cold-start samples "
        f"(and as many runc floor runs); {sizes.image_samples} samples per image figure; "
        f"{total_s:.0f} s in all",
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
    # Ray missing or failing is a skipped baseline, not a failed run.
    failed = [o for o in outcomes if o.skipped and o.name != "Ray baseline"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
