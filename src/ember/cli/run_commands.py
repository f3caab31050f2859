"""`ember run` and `ember deploy`."""

from __future__ import annotations

import asyncio
import inspect
from typing import Annotated, Any

import typer
from rich.console import Console

from ember.cli.import_file import find_runnable, import_app_file, single_app
from ember.cli.parameters import parse_arguments
from ember.sdk.app import LocalEntrypoint
from ember.sdk.function import Function
from ember.sdk.output import enable_output

console = Console(stderr=True, highlight=False)


def call_entrypoint(entrypoint: LocalEntrypoint, values: dict[str, Any]) -> Any:
    """Call a local entrypoint to the end; an `async def` one runs in its own event loop here.

    Its own loop, not the SDK's: there `.aio` calls await the SDK's loop from outside as they do
    from any async program, a blocking call inside it still works, and a slow step of the user's
    does not hold up the app's heartbeats and logs, which run on the SDK's loop.
    """
    result = entrypoint(**values)
    if inspect.iscoroutine(result):
        return asyncio.run(result)
    return result


def run(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="FILE.py, or FILE.py::NAME to run one function")],
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Keep the app running after")
    ] = False,
) -> None:
    """Run an app's local entrypoint (or one function) in an ephemeral app.

    The entrypoint's parameters become options: `ember run hello.py --n 1000`.
    """
    path, _, name = target.partition("::")
    module = import_app_file(path)
    app, runnable = find_runnable(module, path, name or None)
    raw_f = runnable.get_raw_f() if isinstance(runnable, Function) else runnable.raw_f
    values: Any = parse_arguments(raw_f, list(ctx.args), f"ember run {target}")
    if isinstance(values, int):  # --help was shown
        return
    with enable_output(), app.run(detach=detach):
        if isinstance(runnable, Function):
            result = runnable.remote(**values)
            if result is not None:
                print(result)
        else:
            call_entrypoint(runnable, values)
    if detach:
        console.print(
            f"app {app.app_id} keeps running; stop it with `ember app stop {app.name or path}`"
        )


def deploy(
    path: Annotated[str, typer.Argument(help="FILE.py defining one ember.App")],
    name: Annotated[str | None, typer.Option(help="Deploy under this name")] = None,
) -> None:
    """Deploy an app: a new version that `ember.Function.from_name` finds from anywhere."""
    app = single_app(import_app_file(path), path)
    with enable_output():
        result = app.deploy(name=name)
    deployed = name or app.name
    console.print(f"deployed [bold]{deployed}[/] version {result.version} ({result.app_id})")
    for function_name in app.registered_functions:
        console.print(f"  ember.Function.from_name({deployed!r}, {function_name!r})")


def register(cli: typer.Typer) -> None:
    cli.command(
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(run)
    cli.command()(deploy)
