"""A function's parameters as command-line options: `def main(n: int = 10)` takes `--n 10`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal, get_args, get_origin, get_type_hints

import click

from ember import errors

_TYPES: dict[Any, click.ParamType] = {int: click.INT, float: click.FLOAT, str: click.STRING}


def _option(name: str, parameter: inspect.Parameter, annotation: Any) -> click.Option:
    flag = "--" + name.replace("_", "-")
    required = parameter.default is inspect.Parameter.empty
    default = None if required else parameter.default
    if annotation is bool:
        return click.Option(
            [f"{flag}/--no-{flag[2:]}", name], default=bool(default), required=required
        )
    if get_origin(annotation) is Literal:
        choice = click.Choice([str(value) for value in get_args(annotation)])
        return click.Option([flag, name], type=choice, default=default, required=required)
    if annotation is inspect.Parameter.empty:
        annotation = type(default) if default is not None else str
    if annotation not in _TYPES:
        raise errors.InvalidError(
            f"parameter {name!r} has type {annotation!r}; command-line options take int, float, "
            "str, bool or a Literal"
        )
    return click.Option([flag, name], type=_TYPES[annotation], default=default, required=required)


def parse_arguments(
    raw_f: Callable[..., Any], arguments: list[str], program: str
) -> dict[str, Any]:
    """Parse `arguments` against the parameters of `raw_f`; a usage error exits with help."""
    hints = get_type_hints(raw_f)
    options = [
        _option(name, parameter, hints.get(name, parameter.annotation))
        for name, parameter in inspect.signature(raw_f).parameters.items()
    ]
    command = click.Command(program, params=options, callback=lambda **values: values)
    return command.main(arguments, prog_name=program, standalone_mode=False)  # type: ignore[no-any-return]
