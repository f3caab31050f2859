"""The autoscaling policy on plain data, one tick at a time."""

from dataclasses import replace

from ember.control.autoscaler.policy import (
    ContainerLoad,
    ScalingDecision,
    ScalingInput,
    decide,
    desired_containers,
)

WINDOW = 60.0


def busy(container_id: str) -> ContainerLoad:
    return ContainerLoad(container_id, idle_since=None)


def idle(container_id: str, since: float) -> ContainerLoad:
    return ContainerLoad(container_id, idle_since=since)


def tick(now: float, *containers: ContainerLoad, queued: int = 0, running: int = 0, **settings):
    return ScalingInput(
        now=now,
        queued=queued,
        running=running,
        containers=containers,
        scaledown_window_s=WINDOW,
        **settings,
    )


def test_no_load_and_no_containers_does_nothing() -> None:
    assert decide(tick(0.0)) == ScalingDecision(start=0, stop=())


def test_one_queued_input_scales_from_zero() -> None:
    assert decide(tick(0.0, queued=1)) == ScalingDecision(start=1, stop=())


def test_demand_counts_queued_and_running_inputs() -> None:
    state = tick(0.0, busy("a"), queued=2, running=1)
    assert desired_containers(state) == 3
    assert decide(state).start == 2


def test_several_inputs_per_container_need_fewer_containers() -> None:
    assert desired_containers(tick(0.0, queued=5, inputs_per_container=2)) == 3


def test_max_containers_clamps_the_start() -> None:
    assert decide(tick(0.0, busy("a"), queued=10, max_containers=3)).start == 2


def test_max_containers_zero_means_no_limit() -> None:
    assert decide(tick(0.0, queued=50, max_containers=0)).start == 50


def test_min_containers_start_while_idle() -> None:
    assert decide(tick(0.0, min_containers=2)) == ScalingDecision(start=2, stop=())


def test_min_containers_stay_warm_past_the_window() -> None:
    state = tick(1000.0, idle("a", 0.0), idle("b", 0.0), min_containers=2)
    assert decide(state) == ScalingDecision(start=0, stop=())


def test_starting_containers_count_toward_demand() -> None:
    assert decide(tick(0.0, busy("starting"), queued=1)) == ScalingDecision(start=0, stop=())


def test_idle_container_is_kept_until_the_window_passes() -> None:
    state = tick(10.0, idle("a", 10.0))
    for now in (10.0, 40.0, 10.0 + WINDOW - 0.001):
        assert decide(replace(state, now=now)).stop == ()
    assert decide(replace(state, now=10.0 + WINDOW)).stop == ("a",)


def test_scale_down_stops_the_longest_idle_first() -> None:
    containers = (idle("recent", 50.0), idle("oldest", 0.0), idle("middle", 20.0))
    state = tick(200.0, *containers, running=1)
    assert decide(state).stop == ("oldest", "middle")


def test_scale_down_skips_containers_still_inside_their_window() -> None:
    state = tick(100.0, idle("old", 0.0), idle("fresh", 90.0))
    assert decide(state).stop == ("old",)


def test_busy_containers_are_never_stopped() -> None:
    state = tick(10_000.0, busy("a"), busy("b"), idle("c", 0.0), max_containers=1)
    assert decide(state) == ScalingDecision(start=0, stop=("c",))


def test_a_function_falls_back_to_zero_tick_by_tick() -> None:
    state = tick(0.0, queued=1)
    assert decide(state).start == 1
    state = replace(state, now=1.0, queued=0, running=1, containers=(busy("a"),))
    assert decide(state) == ScalingDecision(start=0, stop=())
    state = replace(state, now=2.0, running=0, containers=(idle("a", 2.0),))
    assert decide(state) == ScalingDecision(start=0, stop=())
    state = replace(state, now=2.0 + WINDOW)
    assert decide(state) == ScalingDecision(start=0, stop=("a",))
