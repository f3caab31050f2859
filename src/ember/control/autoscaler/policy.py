"""How many containers a function should have: a pure function of its load and settings.

The desired count follows load (queued plus running inputs, one input per container), clamped
to [min_containers, max_containers]. A container idle for `scaledown_window` seconds may stop
when the function has more than it needs, so an idle function falls back to `min_containers`
(zero by default) and costs nothing. `now` is an input: nothing here reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ContainerLoad:
    container_id: str
    idle_since: float | None  # None while it runs an input or is starting


@dataclass(frozen=True)
class ScalingInput:
    now: float
    queued: int
    running: int
    containers: tuple[ContainerLoad, ...]
    min_containers: int = 0
    max_containers: int = 0  # 0: no limit
    scaledown_window_s: float = 60.0
    inputs_per_container: int = 1


@dataclass(frozen=True)
class ScalingDecision:
    start: int
    stop: tuple[str, ...]


def desired_containers(state: ScalingInput) -> int:
    demand = math.ceil((state.queued + state.running) / max(1, state.inputs_per_container))
    desired = max(demand, state.min_containers)
    if state.max_containers > 0:
        desired = min(desired, state.max_containers)
    return desired


def idle_past_window(state: ScalingInput) -> list[ContainerLoad]:
    """Idle containers whose scaledown window has passed, longest idle first."""
    expired = [
        c
        for c in state.containers
        if c.idle_since is not None and state.now - c.idle_since >= state.scaledown_window_s
    ]
    return sorted(expired, key=lambda c: c.idle_since or 0.0)


def decide(state: ScalingInput) -> ScalingDecision:
    desired = desired_containers(state)
    live = len(state.containers)
    if desired >= live:
        return ScalingDecision(start=desired - live, stop=())
    surplus = live - desired
    return ScalingDecision(
        start=0, stop=tuple(c.container_id for c in idle_past_window(state)[:surplus])
    )
