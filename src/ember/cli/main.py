"""`ember`: the command line. One module per noun; this one wires them together."""

from __future__ import annotations

import sys
import traceback

import click
import typer
from rich.console import Console

from ember import errors
from ember.cli import (
    app_commands,
    cluster_commands,
    image_commands,
    run_commands,
    service_commands,
    tracebacks,
)

cli = typer.Typer(
    name="ember",
    help="Run Python functions in containers on your own machines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
run_commands.register(cli)
cli.add_typer(app_commands.group, name="app")
cli.add_typer(cluster_commands.group, name="cluster")
cli.add_typer(image_commands.group, name="image")
service_commands.register(cli)


def main() -> None:
    """Run the CLI; an error a user can cause ends in one message, never a traceback, and an
    exception from the user's code shows the user's frames, not ember's."""
    try:
        code = cli(standalone_mode=False)  # an int when a command exits early (130: Ctrl-C)
        if isinstance(code, int) and code:
            sys.exit(code)
    except errors.RemoteError as error:
        # The user's own exception, raised remotely, whose class does not exist here.
        sys.stderr.write(tracebacks.format_user_exception(error))
        sys.exit(1)
    except errors.Error as error:
        if tracebacks.full_tracebacks():
            traceback.print_exc()
        Console(stderr=True, soft_wrap=True).print(f"[bold red]Error:[/] {error}", highlight=False)
        sys.exit(1)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as error:
        sys.stderr.write(tracebacks.format_user_exception(error))
        sys.exit(1)
