"""ember's warm round trip and fan-out beside Ray's, in blocks taken in turn.

`repeats` rounds; in each, one block of Ray (`ray_baseline.run`: `ray.init`, the round trips and
the fan-out, `ray.shutdown`, in a process of its own) and one block of ember
(`warm_roundtrip.block`, then `fanout.block`), Ray first in even rounds and ember first in odd
ones (with two rounds: Ray, ember, ember, Ray), so load that drifts during the run weighs on both
alike. Each figure pools its side's blocks: the round trips' percentiles over every timed call,
the fan-out as all inputs over all the timed maps' seconds.

ember's local cluster stays up during Ray's blocks, idle: the benchmark waits until it has no
function container and what it started is quiet before each Ray block (standby containers wait,
doing nothing); what the cluster used meanwhile is in the details. A block during which other
work used more than the threshold is taken again (`common.guarded`); rows whose blocks (theirs
or their baseline's) stayed loaded say so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks import fanout, ray_baseline, warm_roundtrip
from benchmarks.common import (
    LoadTally,
    Outcome,
    cluster_stub,
    flag_figures,
    guarded,
    log,
    percentile,
    summary_ms,
    tree_cpu_s,
    wait_for_containers,
    wait_until_quiet,
)

ZERO_TIMEOUT_S = 60.0


@dataclass
class Side:
    """One side's blocks, in the order taken."""

    rtt: list[list[float]] = field(default_factory=list)
    fanout: list[tuple[int, float]] = field(default_factory=list)  # (inputs, seconds)
    rtt_tally: LoadTally = field(default_factory=LoadTally)
    fanout_tally: LoadTally = field(default_factory=LoadTally)

    def samples(self) -> list[float]:
        return [s for block in self.rtt for s in block]

    def rate(self) -> float | None:
        inputs = sum(n for n, _ in self.fanout)
        seconds = sum(s for _, s in self.fanout)
        return inputs / seconds if seconds else None


def run(
    warm: bool,
    fan: bool,
    ray: bool,
    calls: int,
    warmup: int,
    inputs: int,
    fanout_warmup: int,
    repeats: int,
    limit_s: float,
) -> list[Outcome]:
    """The outcomes "Ray baseline" (if `ray`), "warm round trip" (if `warm`), "fan-out" (if
    `fan`)."""
    ember, theirs = Side(), Side()
    ray_outcome = Outcome("Ray baseline")
    warm_outcome, fan_outcome = Outcome("warm round trip"), Outcome("fan-out")
    ray_chosen = ray
    ray_note = "Ray not run" if not ray else ""
    why_not = ray_baseline.available() if ray else ""
    if why_not:
        ray_outcome.skipped = why_not
        ray_note, ray = "Ray not installed", False
    order_text: list[str] = []
    idle_cluster: list[float] = []  # cores the idle cluster used during each Ray block
    for number in range(repeats):
        for side in ("ray", "ember") if number % 2 == 0 else ("ember", "ray"):
            if side == "ray" and ray:
                try:
                    rtt, fanned, cores = _ray_block(
                        theirs, number, calls if warm or not fan else 0, warmup,
                        inputs if fan else 0, limit_s,
                    )  # fmt: skip
                except RuntimeError as error:
                    log(f"  Ray could not run: {error}; the ember benchmarks go on without it")
                    ray_outcome.skipped = f"failed: {error}"
                    ray_note, ray = "Ray failed", False
                    continue
                idle_cluster.append(cores)
                order_text.append(f"Ray ({_block_text(rtt, fanned)})")
            elif side == "ember" and (warm or fan):
                rtt, fanned = _ember_block(
                    ember, warm, fan, calls, warmup, inputs, fanout_warmup, limit_s,
                    warm_outcome, fan_outcome,
                )  # fmt: skip
                order_text.append(f"ember ({_block_text(rtt, fanned)})")
    order = "; ".join(order_text)
    if warm and ember.rtt:
        samples, ray_samples = ember.samples(), theirs.samples()
        if len(samples) < calls * repeats:
            warm_outcome.details.append(
                f"stopped at its time limit: {len(samples)} of {calls * repeats} calls"
            )
        log(f"  ember warm round trip, all blocks: {summary_ms(samples)}")
        warm_outcome.details.append(f"ember round trips, all blocks: {summary_ms(samples)}")
        if ray_samples:
            warm_outcome.details.append(f"Ray round trips, all blocks: {summary_ms(ray_samples)}")
        warm_outcome.figures = warm_roundtrip.figures(samples, ray_samples, ray_note)
        _flag_and_tell(warm_outcome, ember.rtt_tally, theirs.rtt_tally, order)
    if fan and ember.fanout:
        rate, ray_rate = ember.rate(), theirs.rate()
        assert rate is not None
        total = sum(n for n, _ in ember.fanout)
        fan_outcome.details.append(
            f"ember fan-out: {total} inputs in {sum(s for _, s in ember.fanout):.3f} s over "
            f"{len(ember.fanout)} blocks: " + ", ".join(f"{n / s:.0f}/s" for n, s in ember.fanout)
        )
        if theirs.fanout:
            fan_outcome.details.append(
                "Ray fan-out, each block: " + ", ".join(f"{n / s:.0f}/s" for n, s in theirs.fanout)
            )
        figure = fanout.figure(rate, ray_rate, ray_note, f"fan-out, {inputs} no-op inputs a block")
        fan_outcome.figures = [figure]
        _flag_and_tell(fan_outcome, ember.fanout_tally, theirs.fanout_tally, order)
    if idle_cluster:
        ray_outcome.details.append(
            f"{len(idle_cluster)} blocks, taken in turn with ember's; ember's cluster stayed up, "
            f"idle, and used {max(idle_cluster):.3f} cores at most during one"
        )
    _ray_lines(ray_outcome, theirs)
    outcomes = [ray_outcome] if ray_chosen else []
    if warm:
        outcomes.append(warm_outcome)
    if fan:
        outcomes.append(fan_outcome)
    return outcomes


def _flag_and_tell(outcome: Outcome, ours: LoadTally, ray: LoadTally, order: str) -> None:
    """Flag the outcome's figures if ember's or Ray's blocks stayed loaded, and say so."""
    tally = LoadTally()
    tally.extend(ours)
    tally.extend(ray)
    flag_figures(outcome.figures, tally)
    outcome.details.append(f"blocks in the order taken: {order}")
    outcome.details.append(f"other work, ember's and Ray's blocks: {tally.summary()}")


def _ray_lines(outcome: Outcome, theirs: Side) -> None:
    if theirs.rtt:
        outcome.details.append(f"Ray round trips, all blocks: {summary_ms(theirs.samples())}")
    if theirs.fanout:
        rate = theirs.rate()
        outcome.details.append(f"Ray fan-out, all blocks: {rate:.0f} tasks/s")


def _ray_block(
    theirs: Side, number: int, calls: int, warmup: int, tasks: int, limit_s: float
) -> tuple[list[float], tuple[int, float] | None, float]:
    from ember.client import local_cluster

    cluster = local_cluster.running()
    if cluster is not None:  # ember's cluster idle: no function container, nothing busy
        wait_for_containers(cluster_stub(), 0, ZERO_TIMEOUT_S)
    wait_until_quiet()
    holder: dict[str, float] = {}

    def body() -> dict[str, Any]:
        started = time.monotonic()
        before = tree_cpu_s(cluster.supervisor_pid) if cluster else 0.0
        result = ray_baseline.run(calls, warmup, tasks, limit_s)
        used = (tree_cpu_s(cluster.supervisor_pid) if cluster else 0.0) - before
        holder["cores"] = used / max(time.monotonic() - started, 1e-9)
        return result

    tried = guarded(f"Ray block {number + 1}", body)
    result = tried.value
    rtt = result["rtt_s"]
    fanned = (result["tasks"], result["fanout_s"]) if result["tasks"] else None
    if rtt:
        theirs.rtt.append(rtt)
        theirs.rtt_tally.add(tried)
    if fanned:
        theirs.fanout.append(fanned)
        theirs.fanout_tally.add(tried)
    return rtt, fanned, holder.get("cores", 0.0)


def _ember_block(
    ember: Side,
    warm: bool,
    fan: bool,
    calls: int,
    warmup: int,
    inputs: int,
    fanout_warmup: int,
    limit_s: float,
    warm_outcome: Outcome,
    fan_outcome: Outcome,
) -> tuple[list[float], tuple[int, float] | None]:
    stub = cluster_stub()
    rtt: list[float] = []
    fanned = None
    if warm:
        wait_for_containers(stub, 0, ZERO_TIMEOUT_S)
        wait_until_quiet()
        got = ember.rtt_tally.add(
            guarded("ember warm block", lambda: warm_roundtrip.block(calls, warmup, limit_s))
        )
        rtt = got["samples"]
        ember.rtt.append(rtt)
        warm_outcome.details.append(
            f"block {len(ember.rtt)}: first call (cold container) {got['first_call_s']:.3f} s; "
            f"{summary_ms(rtt)}"
        )
    if fan:
        wait_for_containers(stub, 0, ZERO_TIMEOUT_S)
        wait_until_quiet()
        got = ember.fanout_tally.add(
            guarded("ember fan-out block", lambda: fanout.block(inputs, fanout_warmup, limit_s))
        )
        fanned = (got["inputs"], got["seconds"])
        ember.fanout.append(fanned)
        log(f"  ember fan-out: {got['inputs']} inputs in {got['seconds']:.3f} s")
        fan_outcome.details.append(
            f"block {len(ember.fanout)}: 2 containers serving {got['serving_s']:.2f} s after the "
            f"app started; {got['inputs']} inputs in {got['seconds']:.3f} s"
        )
    return rtt, fanned


def _block_text(rtt: list[float], fanned: tuple[int, float] | None) -> str:
    parts = []
    if rtt:
        parts.append(f"round trip p50 {percentile(rtt, 50) * 1000:.2f} ms")
    if fanned:
        parts.append(f"fan-out {fanned[0] / fanned[1]:.0f}/s")
    return ", ".join(parts)
