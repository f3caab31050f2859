"""What the containers' isolation costs, before and after, in the same run: the warm round trip,
the fan-out and cold starts (standby, and no standby: fresh runc) on this checkout and on the
code before the isolation came.

"Before" is the parent of the commit that added `src/ember/container/userns.py` (the user
namespace with its idmapped image layer, the seccomp filter and the per-container disk came in
that commit), or the revision `--before` names. Its `src/` is exported with `git archive` into
the run's data directory (nothing in the checkout or its git state changes) and its protobuf
stubs generated there. "After" is this checkout's `src/` as it is, uncommitted changes included;
the details say which commits and changes lie between the two, since they differ by more than
the isolation where later work came too.

Each side runs in a child process of its own (`python -m benchmarks.isolation --child`), with
`PYTHONPATH` on its `src/`, its own data directory and local cluster, the machine's image
directory shared; the child runs the same benchmark code (`warm_roundtrip.block`,
`fanout.block`, the cold-start calls of `cold_start`) on whichever ember it imports, and answers
one JSON line per command. Both clusters stay up; the parent takes the sides' blocks in turn
(before, after, after, before, ... over `repeats` rounds), and each block does the warm round
trip, the fan-out, cold starts with standbys on, then with the worker started again without
(`EMBER_STANDBY_CONTAINERS=0`) and again with. A block during which other work used more than
the threshold is taken again (`common.guarded`). Cold-start samples are counted by what served
them, as in `cold_start`, and only those the row names are in it.

The breakdown of a start's steps with each part of the isolation on and off is the cold-start
benchmark's (`isolation_steps`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from benchmarks.common import (
    BENCH_DIR,
    FRESH,
    SERVED_LABEL,
    STANDBY,
    Figure,
    LoadTally,
    Outcome,
    flag_figures,
    guarded,
    log,
    percentile,
    served_by,
    summary_ms,
)

ISOLATION_FILE = "src/ember/container/userns.py"
REPO = BENCH_DIR.parent
COMMAND_TIMEOUT_S = 900.0
TARGET_RTT_P50_MS = 2.0
TARGET_FANOUT_PER_S = 2500.0
TARGET_COLD_P50_MS = 250.0
BEFORE, AFTER = "before", "after"


@dataclass(frozen=True)
class BlockSizes:
    calls: int
    warmup: int
    inputs: int
    fanout_warmup: int
    cold_samples: int  # per standby setting
    limit_s: float


@dataclass
class SideResults:
    rtt: list[float] = field(default_factory=list)
    fanout: list[tuple[int, float]] = field(default_factory=list)
    cold: dict[bool, list[dict[str, Any]]] = field(default_factory=lambda: {True: [], False: []})
    tally: LoadTally = field(default_factory=LoadTally)


def before_revision(given: str | None) -> str:
    """The revision to measure as "before": `given`, or the parent of the commit that added the
    isolation (read-only git commands)."""
    if given:
        return _git("rev-parse", "--short", given)
    added = _git("log", "--diff-filter=A", "--format=%h", "-1", "--", ISOLATION_FILE)
    if not added:
        raise RuntimeError(f"no commit in this checkout's history adds {ISOLATION_FILE}")
    return _git("rev-parse", "--short", f"{added}^")


def _git(*args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def export_tree(revision: str, target: Path) -> Path:
    """`src/` of `revision` under `target` (git archive), its protobuf stubs generated; the
    directory to put on PYTHONPATH."""
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", revision, "src"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True, timeout=120)
    src = target / "src"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Isrc", "--python_out=src",
         "--grpc_python_out=src", "src/ember/proto/api.proto"],
        cwd=target, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return src


class Child:
    """One side: a child process on one `src/`, with a cluster of its own, driven line by line."""

    def __init__(self, name: str, src: Path, data_dir: Path) -> None:
        self.name, self.src, self.data_dir = name, src, data_dir
        env = {**os.environ, "PYTHONPATH": str(src), "EMBER_DATA_DIR": str(data_dir)}
        env.pop("EMBER_STANDBY_CONTAINERS", None)
        self.env = env
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.isolation", "--child"],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        line = _read_line(self._process.stdout, COMMAND_TIMEOUT_S)
        if not line:
            raise RuntimeError(
                f"the {self.name} side exited (code {self._process.poll()}) during {command['do']}"
            )
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(
                f"the {self.name} side failed during {command['do']}: {answer['error']}"
            )
        return answer

    def close(self) -> None:
        """Stop its cluster and the child; whatever happens, nothing of it is left running."""
        with contextlib.suppress(Exception):
            if self._process.poll() is None:
                self.ask({"do": "stop"})
        if self._process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=30)
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        pids = self.data_dir / "cluster"
        if any((pids / f"{part}.pid").exists() for part in ("supervisor", "control", "worker")):
            subprocess.run(
                [sys.executable, "-m", "ember", "cluster", "stop"],
                env=self.env, capture_output=True, timeout=120, check=False,
            )  # fmt: skip


def _read_line(stream: IO[str], timeout_s: float) -> str:
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise RuntimeError(f"no answer within {timeout_s:g} s")
    return stream.readline()


def run(revision: str | None, sizes: BlockSizes, repeats: int, work_dir: Path) -> Outcome:
    outcome = Outcome("isolation, before and after")
    before = before_revision(revision)
    head = _git("rev-parse", "--short", "HEAD")
    between = _git("log", "--oneline", "--format=%h", f"{before}..HEAD").split()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "src"], timeout=60
    ).returncode
    outcome.details.append(
        f"before: {before}; after: {head}{' plus uncommitted changes in src/' if dirty else ''}; "
        f"{len(between)} commits between ({', '.join(reversed(between))})"
    )
    log(f"  before: {before} (exported to {work_dir / 'before-tree'}); after: this checkout")
    src = export_tree(before, work_dir / "before-tree")
    sides = {BEFORE: SideResults(), AFTER: SideResults()}
    order: list[str] = []
    children: dict[str, Child] = {}
    try:
        children[BEFORE] = Child(BEFORE, src, work_dir / BEFORE)
        children[AFTER] = Child(AFTER, REPO / "src", work_dir / AFTER)
        for name, child in children.items():
            started = time.perf_counter()
            answer = child.ask({"do": "start"})
            log(f"  {name}: {answer['said']} ({time.perf_counter() - started:.1f} s)")
        for number in range(repeats):
            for name in (BEFORE, AFTER) if number % 2 == 0 else (AFTER, BEFORE):
                _block(name, children[name], sides[name], sizes, number, order)
    finally:
        for child in children.values():
            child.close()
    _figures(outcome, sides, before)
    outcome.details.append("blocks in the order taken: " + "; ".join(order))
    return outcome


def _block(
    name: str, child: Child, side: SideResults, sizes: BlockSizes, number: int, order: list[str]
) -> None:
    def body() -> dict[str, Any]:
        warm = child.ask(
            {"do": "warm", "calls": sizes.calls, "warmup": sizes.warmup, "limit": sizes.limit_s}
        )
        fan = child.ask(
            {"do": "fanout", "inputs": sizes.inputs, "warmup": sizes.fanout_warmup,
             "limit": sizes.limit_s}
        )  # fmt: skip
        cold = {
            standby: child.ask({"do": "cold", "samples": sizes.cold_samples, "standby": standby})
            for standby in (True, False)
        }
        return {"warm": warm, "fanout": fan, "cold": cold}

    got = side.tally.add(guarded(f"isolation: {name} block {number + 1}", body))
    side.rtt += got["warm"]["samples"]
    side.fanout.append((got["fanout"]["inputs"], got["fanout"]["seconds"]))
    for standby, answer in got["cold"].items():
        side.cold[standby] += answer["samples"]
    rtt = percentile(got["warm"]["samples"], 50) * 1000
    rate = got["fanout"]["inputs"] / got["fanout"]["seconds"]
    text = f"{name}: round trip p50 {rtt:.2f} ms, fan-out {rate:.0f}/s"
    for standby, answer in got["cold"].items():
        matching = [s["to_result_s"] for s in answer["samples"] if _matches(s, standby)]
        if matching:
            text += f", cold ({_setting(standby)}) p50 {percentile(matching, 50) * 1000:.0f} ms"
    order.append(text)
    log(f"  {text}")


def _matches(sample: dict[str, Any], standby: bool) -> bool:
    return served_by(sample["hostname"]) == (STANDBY if standby else FRESH)


def _setting(standby: bool) -> str:
    return SERVED_LABEL[STANDBY if standby else FRESH]


def _figures(outcome: Outcome, sides: dict[str, SideResults], before: str) -> None:
    old, new = sides[BEFORE], sides[AFTER]
    tally = LoadTally()
    tally.extend(old.tally)
    tally.extend(new.tally)
    versus = f"before ({before})"
    figures: list[Figure] = []
    if new.rtt and old.rtt:
        for q in (50, 99):
            value = percentile(new.rtt, q) * 1000
            figures.append(
                Figure(
                    f"isolation: warm round trip p{q}, after vs before",
                    value,
                    "ms",
                    baseline=percentile(old.rtt, q) * 1000,
                    baseline_name=versus,
                    target=f"<= {TARGET_RTT_P50_MS:g} ms" if q == 50 else "",
                    met=value <= TARGET_RTT_P50_MS if q == 50 else None,
                )
            )
    if new.fanout and old.fanout:
        rate = sum(n for n, _ in new.fanout) / sum(s for _, s in new.fanout)
        figures.append(
            Figure(
                "isolation: fan-out, after vs before",
                rate,
                "/s",
                baseline=sum(n for n, _ in old.fanout) / sum(s for _, s in old.fanout),
                baseline_name=versus,
                target=f">= {TARGET_FANOUT_PER_S:g} /s",
                met=rate >= TARGET_FANOUT_PER_S,
            )
        )
    for standby in (True, False):
        label = f"cold start (scaled to zero, {_setting(standby)})"
        values = {}
        notes = []
        for name, side in ((BEFORE, old), (AFTER, new)):
            samples = side.cold[standby]
            matching = [s["to_result_s"] for s in samples if _matches(s, standby)]
            values[name] = matching
            if len(matching) < len(samples):
                notes.append(f"{name}: {len(samples) - len(matching)} of {len(samples)}")
            if samples:
                outcome.details.append(f"{name}, {label}, to result: {_summary(matching)}")
        for q in (50, 99):
            value = percentile(values[AFTER], q) * 1000 if values[AFTER] else None
            checked = q == 50 and value is not None
            figures.append(
                Figure(
                    f"isolation: {label} to result p{q}, after vs before",
                    value,
                    "ms",
                    baseline=percentile(values[BEFORE], q) * 1000 if values[BEFORE] else None,
                    baseline_name=versus,
                    target=f"<= {TARGET_COLD_P50_MS:g} ms" if q == 50 else "",
                    met=value <= TARGET_COLD_P50_MS if checked and value is not None else None,
                    note=(
                        "samples served otherwise, left out: " + "; ".join(notes) if notes else ""
                    ),
                )
            )
    flag_figures(figures, tally)
    outcome.figures = figures
    for name, side in ((BEFORE, old), (AFTER, new)):
        if side.rtt:
            outcome.details.append(f"{name}, warm round trips: {summary_ms(side.rtt)}")
    outcome.details.append(f"other work, both sides' blocks: {tally.summary()}")


def _summary(seconds: list[float]) -> str:
    return summary_ms(seconds) if seconds else "no sample served as the row claims"


# ---- the child: one side's cluster, one command per line


def _child() -> None:
    out = sys.stdout
    sys.stdout = sys.stderr  # what the code below prints must not mix with the answers
    os.environ.pop("EMBER_SERVER_URL", None)
    for line in sys.stdin:
        command = json.loads(line)
        try:
            answer = _answer(command)
        except Exception as error:  # the parent reports it and stops this side
            answer = {"error": f"{type(error).__name__}: {error}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
        if command["do"] == "stop":
            return


def _answer(command: dict[str, Any]) -> dict[str, Any]:
    from benchmarks import cold_start, fanout, warm_roundtrip
    from benchmarks.common import cluster_stub, load_app, wait_for_containers, wait_until_quiet

    do = command["do"]
    if do == "start":
        from ember.builder import ensure_base_image
        from ember.client import local_cluster

        ensure_base_image()
        local_cluster.ensure_running()
        import ember

        return {"said": f"cluster up, ember from {Path(ember.__file__).parent.parent}"}
    if do == "stop":
        from ember.client import local_cluster

        with contextlib.suppress(Exception):
            wait_for_containers(cluster_stub(), 0, 30.0)
        local_cluster.stop()
        return {"said": "stopped"}
    stub = cluster_stub()
    wait_for_containers(stub, 0, cold_start.ZERO_TIMEOUT_S)
    wait_until_quiet()
    if do == "warm":
        return warm_roundtrip.block(command["calls"], command["warmup"], command["limit"])
    if do == "fanout":
        return fanout.block(command["inputs"], command["warmup"], command["limit"])
    if do == "cold":
        module = load_app("cold_app.py")
        standbys = cold_start.Standbys(module, stub)
        standbys.on = os.environ.get("EMBER_STANDBY_CONTAINERS") != "0"
        standbys.set(command["standby"])
        standbys.untimed_call()
        samples = []
        with module.app.run():  # type: ignore[attr-defined]
            for _ in range(command["samples"]):
                wait_for_containers(stub, 0, cold_start.ZERO_TIMEOUT_S)
                wait_until_quiet()
                sample = cold_start._call(module.first_line)  # type: ignore[attr-defined]
                samples.append(dataclasses.asdict(sample))
        standbys.set(True)  # the next block's warm round trip and fan-out run as the default
        return {"samples": samples}
    raise ValueError(f"unknown command {do!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", action="store_true", help="run one side (driven on stdin)")
    args = parser.parse_args()
    if not args.child:
        parser.error("run from `python -m benchmarks.run --only isolation`, or with --child")
    _child()


if __name__ == "__main__":
    main()
