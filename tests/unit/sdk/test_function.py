"""`FunctionSpec`: what `@app.function(...)` accepts, its defaults and its messages."""

import re
from typing import Any

import pytest

from ember import InvalidError, Retries
from ember.sdk.function import DEFAULT_CPU, DEFAULT_MEMORY_MB, FunctionSpec


def square(x: int) -> int:
    return x * x


def numbers(n: int):
    yield from range(n)


async def async_numbers(n: int):
    for i in range(n):
        yield i


def build(raw_f: Any = square, **overrides: Any) -> FunctionSpec:
    options: dict[str, Any] = {
        "module": "hello",
        "name": None,
        "cpu": None,
        "memory": None,
        "timeout": 300,
        "retries": None,
        "min_containers": 0,
        "max_containers": None,
        "scaledown_window": 60,
    }
    options.update(overrides)
    return FunctionSpec(raw_f, **options)


def test_defaults() -> None:
    spec = build()
    assert (spec.name, spec.module, spec.qualname) == ("square", "hello", "square")
    assert (spec.cpu, spec.cpu_limit) == (DEFAULT_CPU, 0.0)
    assert (spec.memory_mb, spec.memory_limit_mb) == (DEFAULT_MEMORY_MB, 0)
    assert (spec.timeout_s, spec.retries) == (300.0, Retries(0))
    assert (spec.min_containers, spec.max_containers, spec.scaledown_window_s) == (0, 0, 60.0)
    assert spec.is_generator is False


def test_name_overrides_the_function_name() -> None:
    assert build(name="sq").name == "sq"


@pytest.mark.parametrize("raw_f", [numbers, async_numbers])
def test_generator_functions_are_marked(raw_f: Any) -> None:
    assert build(raw_f).is_generator is True


def test_a_number_is_both_request_and_limit() -> None:
    spec = build(cpu=2, memory=512)
    assert (spec.cpu, spec.cpu_limit, spec.memory_mb, spec.memory_limit_mb) == (2.0, 2.0, 512, 512)


def test_a_pair_is_request_and_limit() -> None:
    spec = build(cpu=(0.5, 2.0), memory=(256, 1024))
    assert (spec.cpu, spec.cpu_limit, spec.memory_mb, spec.memory_limit_mb) == (
        0.5,
        2.0,
        256,
        1024,
    )


@pytest.mark.parametrize("cpu", [0, -1, (1.0, 0.5), (0, 1)])
def test_bad_cpu_is_invalid_and_quotes_the_value(cpu: Any) -> None:
    with pytest.raises(InvalidError, match=r"cpu must be positive.*got " + re.escape(repr(cpu))):
        build(cpu=cpu)


def test_memory_pair_with_limit_below_request_is_invalid() -> None:
    with pytest.raises(InvalidError, match=r"memory .*limit >= request; got \(512, 256\)"):
        build(memory=(512, 256))


@pytest.mark.parametrize("timeout", [0, 0.5, 86_401])
def test_timeout_out_of_range_is_invalid(timeout: float) -> None:
    with pytest.raises(
        InvalidError, match=f"timeout must be from 1 to 86400 seconds, not {timeout}"
    ):
        build(timeout=timeout)


@pytest.mark.parametrize("timeout", [1, 86_400])
def test_timeout_bounds_are_accepted(timeout: float) -> None:
    assert build(timeout=timeout).timeout_s == float(timeout)


@pytest.mark.parametrize(("min_containers", "max_containers"), [(-1, None), (3, 2), (0, 0)])
def test_bad_container_bounds_are_invalid(min_containers: int, max_containers: int | None) -> None:
    expected = f"got min_containers={min_containers}, max_containers={max_containers}"
    with pytest.raises(InvalidError, match=expected):
        build(min_containers=min_containers, max_containers=max_containers)


def test_container_bounds_are_kept() -> None:
    spec = build(min_containers=2, max_containers=2)
    assert (spec.min_containers, spec.max_containers) == (2, 2)


def test_scaledown_window_under_a_second_is_invalid() -> None:
    with pytest.raises(
        InvalidError, match=re.escape("scaledown_window must be at least 1 second, not 0.5")
    ):
        build(scaledown_window=0.5)


def test_retries_accepts_a_count() -> None:
    assert build(retries=3).retries == Retries(3, backoff_coefficient=1.0, initial_delay=1.0)


def test_to_proto_carries_every_setting() -> None:
    spec = build(
        cpu=(0.5, 1.0),
        memory=256,
        timeout=30,
        retries=Retries(2, initial_delay=3.0),
        min_containers=1,
        max_containers=4,
        scaledown_window=5,
    )
    proto = spec.to_proto()
    assert (proto.name, proto.module, proto.qualname) == ("square", "hello", "square")
    assert (proto.resources.cpu, proto.resources.cpu_limit) == (0.5, 1.0)
    assert (proto.resources.memory_mb, proto.resources.memory_limit_mb) == (256, 256)
    assert proto.timeout_s == 30.0
    assert (proto.retries.max_retries, proto.retries.initial_delay_s) == (2, 3.0)
    assert (proto.autoscaling.min_containers, proto.autoscaling.max_containers) == (1, 4)
    assert proto.autoscaling.scaledown_window_s == 5.0
