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
    # A required option gets no default at all: an explicit None would count as one.
    settings: dict[str, Any] = {"required": True}
    if parameter.default is not inspect.Parameter.empty:
        settings = {"default": parameter.default, "required": False}
    if annotation is bool:
        return click.Option([f"{flag}/--no-{flag[2:]}", name], **settings)
    if get_origin(annotation) is Literal:
        values = {str(value): value for value in get_args(annotation)}
        return click.Option(
            [flag, name],
            type=click.Choice(list(values)),
            callback=lambda _ctx, _param, text: values.get(text, text),
            **settings,
        )
    if annotation is inspect.Parameter.empty:
        default = settings.get("default")
        annotation = type(default) if default is not None else str
    if annotation not in _TYPES:
        raise errors.InvalidError(
            f"parameter {name!r} has type {annotation!r}; command-line options take int, float, "
            "str, bool or a Literal"
        )
    return click.Option([flag, name], type=_TYPES[annotation], **settings)


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
