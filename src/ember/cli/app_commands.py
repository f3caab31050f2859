"""`ember app list|logs|stop`."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ember.proto import api_pb2
from ember.sdk._calls import connection
from ember.sdk._sync import iterate_blocking, run_blocking
from ember.sdk.output import show_log

group = typer.Typer(
    help="Manage apps: list them, follow their logs, stop them.", no_args_is_help=True
)

STATES = {
    api_pb2.APP_STATE_EPHEMERAL: "ephemeral",
    api_pb2.APP_STATE_DETACHED: "detached",
    api_pb2.APP_STATE_DEPLOYED: "deployed",
    api_pb2.APP_STATE_STOPPED: "stopped",
}


async def _list(include_stopped: bool) -> api_pb2.AppListResponse:
    conn = await connection()
    return await conn.call(
        conn.ember.AppList, api_pb2.AppListRequest(include_stopped=include_stopped)
    )


@group.command("list")
def list_apps(
    all_: Annotated[bool, typer.Option("--all", help="Include stopped apps")] = False,
) -> None:
    """List running and deployed apps."""
    table = Table("App id", "Name", "State", "Version", "Containers", "Created")
    for app in run_blocking(_list(all_)).apps:
        created = datetime.datetime.fromtimestamp(app.created_at).strftime("%Y-%m-%d %H:%M:%S")
        version = str(app.version) if app.version else "-"
        table.add_row(
            app.app_id, app.name, STATES.get(app.state, "?"), version, str(app.containers), created
        )
    Console().print(table)


async def _logs(name: str, follow: bool) -> AsyncIterator[api_pb2.LogEntry]:
    conn = await connection()
    request = api_pb2.AppLogsRequest(follow=follow)
    if name.startswith("ap-"):
        request.app_id = name
    else:
        request.name = name
    async for entry in conn.ember.AppLogs(request):
        yield entry


@group.command("logs")
def logs(
    name: Annotated[str, typer.Argument(help="App name or id")],
    follow: Annotated[bool, typer.Option(help="Keep following new lines")] = True,
) -> None:
    """Show an app's logs, following new lines as they come (Ctrl-C to stop)."""
    import grpc

    from ember.client.connection import error_from_rpc

    try:
        for entry in iterate_blocking(_logs(name, follow)):
            show_log(entry.fd, entry.data)
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error) from None


async def _stop(name: str) -> str:
    conn = await connection()
    request = (
        api_pb2.AppStopRequest(app_id=name)
        if name.startswith("ap-")
        else api_pb2.AppStopRequest(name=name)
    )
    response = await conn.call(conn.ember.AppStop, request)
    return response.app_id


@group.command("stop")
def stop(name: Annotated[str, typer.Argument(help="App name or id")]) -> None:
    """Stop a running or deployed app and its containers."""
    app_id = run_blocking(_stop(name))
    Console(stderr=True).print(f"stopped {name} ({app_id})")
