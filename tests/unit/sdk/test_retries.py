"""`ember.Retries`: its bounds and what `retries=` accepts."""

import pytest

from ember import InvalidError, Retries


def test_defaults_double_from_one_second_up_to_a_minute() -> None:
    retries = Retries(3)
    assert (retries.backoff_coefficient, retries.initial_delay, retries.max_delay) == (
        2.0,
        1.0,
        60.0,
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_retries": -1}, "max_retries must be from 0 to 10, not -1"),
        ({"max_retries": 11}, "max_retries must be from 0 to 10, not 11"),
        (
            {"max_retries": 1, "backoff_coefficient": 0.5},
            "backoff_coefficient must be from 1 to 10",
        ),
        (
            {"max_retries": 1, "backoff_coefficient": 11.0},
            "backoff_coefficient must be from 1 to 10",
        ),
        ({"max_retries": 1, "initial_delay": -1.0}, "initial_delay must be from 0 to 60"),
        ({"max_retries": 1, "initial_delay": 61.0}, "initial_delay must be from 0 to 60"),
        ({"max_retries": 1, "max_delay": 0.5}, "max_delay from 1 to 60"),
        ({"max_retries": 1, "max_delay": 61.0}, "max_delay from 1 to 60"),
    ],
)
def test_out_of_range_values_are_invalid(fields: dict, message: str) -> None:
    with pytest.raises(InvalidError, match=message):
        Retries(**fields)


@pytest.mark.parametrize("max_retries", [0, 10])
def test_bounds_are_accepted(max_retries: int) -> None:
    assert Retries(max_retries).max_retries == max_retries


def test_of_none_is_no_retries() -> None:
    assert Retries.of(None) == Retries(0)


def test_of_a_count_retries_after_a_fixed_second() -> None:
    assert Retries.of(4) == Retries(4, backoff_coefficient=1.0, initial_delay=1.0)


def test_of_a_retries_is_that_retries() -> None:
    retries = Retries(2, backoff_coefficient=3.0)
    assert Retries.of(retries) is retries


@pytest.mark.parametrize("value", [True, 2.5, "3"])
def test_of_anything_else_is_invalid_and_names_the_type(value: object) -> None:
    with pytest.raises(InvalidError, match=f"not {type(value).__name__}"):
        Retries.of(value)  # type: ignore[arg-type]


def test_of_a_count_out_of_range_is_invalid() -> None:
    with pytest.raises(InvalidError, match="not 11"):
        Retries.of(11)


def test_to_proto_carries_the_policy() -> None:
    proto = Retries(3, backoff_coefficient=1.5, initial_delay=2.0, max_delay=30.0).to_proto()
    assert (proto.max_retries, proto.backoff_coefficient) == (3, 1.5)
    assert (proto.initial_delay_s, proto.max_delay_s) == (2.0, 30.0)
