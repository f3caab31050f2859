"""A local entrypoint's parameters as command-line options."""

from typing import Literal

import click
import pytest

from ember import InvalidError
from ember.cli.parameters import parse_arguments


def main(
    n: int,
    scale: float = 1.5,
    name: str = "world",
    verbose: bool = False,
    mode: Literal["fast", "slow"] = "fast",
    max_items: int = 10,
    untyped=3,
) -> None: ...


def parse(*arguments: str, f=main) -> dict:
    return parse_arguments(f, list(arguments), "ember run app.py")


def test_defaults_fill_what_is_not_given() -> None:
    assert parse("--n", "1") == {
        "n": 1,
        "scale": 1.5,
        "name": "world",
        "verbose": False,
        "mode": "fast",
        "max_items": 10,
        "untyped": 3,
    }


def test_each_type_is_converted() -> None:
    values = parse(
        "--n", "2", "--scale", "0.25", "--name", "ember", "--verbose", "--mode", "slow",
        "--max-items", "7", "--untyped", "9",
    )  # fmt: skip
    assert values == {
        "n": 2,
        "scale": 0.25,
        "name": "ember",
        "verbose": True,
        "mode": "slow",
        "max_items": 7,
        "untyped": 9,  # typed by its default
    }


def test_a_bool_has_a_negative_flag() -> None:
    def f(dry_run: bool = True) -> None: ...

    assert parse("--no-dry-run", f=f) == {"dry_run": False}


def test_a_value_of_the_wrong_type_names_the_option_and_value() -> None:
    with pytest.raises(click.BadParameter) as caught:
        parse("--n", "ten")
    assert caught.value.format_message() == "Invalid value for '--n': 'ten' is not a valid integer."


def test_a_value_outside_a_literal_lists_the_choices() -> None:
    with pytest.raises(click.BadParameter, match="'medium' is not one of 'fast', 'slow'"):
        parse("--n", "1", "--mode", "medium")


def test_an_unknown_option_is_a_usage_error() -> None:
    with pytest.raises(click.NoSuchOption, match="--size"):
        parse("--n", "1", "--size", "3")


def test_a_missing_required_parameter_is_a_usage_error() -> None:
    with pytest.raises(click.MissingParameter) as raised:
        parse()
    assert "--n" in raised.value.format_message()


def test_a_literal_of_ints_gives_an_int() -> None:
    def f(level: Literal[1, 2] = 1) -> None: ...

    assert parse("--level", "2", f=f) == {"level": 2}


def test_an_unsupported_type_is_invalid_and_names_the_parameter() -> None:
    def f(items: list[int]) -> None: ...

    with pytest.raises(InvalidError, match=r"parameter 'items' has type list\[int\].*int, float"):
        parse(f=f)
