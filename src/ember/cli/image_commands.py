"""`ember image list|inspect|rm`."""

from __future__ import annotations

import datetime
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ember.proto import api_pb2
from ember.sdk._calls import connection
from ember.sdk._sync import run_blocking

group = typer.Typer(help="Manage built images: list, inspect, remove.", no_args_is_help=True)


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 1e6:,.1f} MB"


def _time(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


async def _call(method: str, request: object) -> object:
    conn = await connection()
    return await conn.call(getattr(conn.ember, method), request)


@group.command("list")
def list_images() -> None:
    """List built images, oldest first (each build step makes one)."""
    response = run_blocking(_call("ImageList", api_pb2.ImageListRequest()))
    table = Table("Image id", "Built by", "Size", "Files", "Created")
    for image in response.images:  # type: ignore[attr-defined]
        table.add_row(
            image.image_id,
            image.step,
            _size(image.size_bytes),
            str(image.files),
            _time(image.created_at),
        )
    Console().print(table)


@group.command("inspect")
def inspect_image(image_id: Annotated[str, typer.Argument(help="An image id (im-...)")]) -> None:
    """Show an image: its steps, size, environment and working directory."""
    response = run_blocking(_call("ImageGet", api_pb2.ImageGetRequest(image_id=image_id)))
    image = response.image  # type: ignore[attr-defined]
    console = Console()
    console.print(f"[bold]{image.image_id}[/]", highlight=False)
    console.print(f"size     {_size(image.size_bytes)} in {image.files} files", highlight=False)
    console.print(f"created  {_time(image.created_at)}", highlight=False)
    console.print(f"workdir  {image.workdir}", highlight=False)
    for name, value in sorted(json.loads(image.env_json or "{}").items()):
        console.print(f"env      {name}={value}", highlight=False)
    for number, step in enumerate(response.steps, 1):  # type: ignore[attr-defined]
        console.print(f"step {number:>3}  {step}", highlight=False)


@group.command("rm")
def remove_image(image_id: Annotated[str, typer.Argument(help="An image id (im-...)")]) -> None:
    """Remove an image, and the stored content no other image uses."""
    response = run_blocking(_call("ImageDelete", api_pb2.ImageDeleteRequest(image_id=image_id)))
    removed = response.chunks_removed  # type: ignore[attr-defined]
    Console().print(f"removed {image_id} ({removed} chunks freed)", highlight=False)
