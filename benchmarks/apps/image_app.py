"""The image benchmark's app: torch on an image of its own, and a no-op on the small base image.

Image T is torch from a local wheel plus numpy (about 1 GB installed). The wheel's path is known
only when the benchmark runs (it asks pip for it), so the benchmark sets `app.image` to
`torch_image(wheel)` before it runs the app: the functions that name no image run on it. Inside
a container the module is imported again with `app.image` unset, which is fine: a container only
looks its function up.

Every function stops after the shortest scaledown window ember allows (1 s), so the benchmark can
wait for the app to be back at zero containers before each timed call.

The timed functions also return their container's hostname, after their work: the worker names a
standby container `sb-…` and one started for its function `ta-…`, so the benchmark can tell which
served each sample.
"""

import socket
import time
from pathlib import Path

import tree_reader

import ember

app = ember.App("bench-image")

WHEELS = "/tmp/wheels"


def torch_image(wheel: Path) -> ember.Image:
    """Image T: the local torch wheel copied in, then installed with numpy (its other
    requirements come from the package index, in the build container)."""
    return (
        ember.Image.debian_slim()
        .add_local_file(wheel, f"{WHEELS}/")
        .pip_install(f"{WHEELS}/{wheel.name}", "numpy")
    )


@app.function(scaledown_window=1)
def torch_sum() -> tuple[float, str]:
    import torch

    return float(torch.ones(2).sum()), socket.gethostname()


@app.function(scaledown_window=1)
def torch_probe() -> tuple[float, float, float, str]:
    """torch_sum, with the wall clock read on its first line, after the import and at the end:
    where the time of a cold start goes (a function of its own, so the timed one stays plain)."""
    first_line = time.time()
    import torch

    imported = time.time()
    float(torch.ones(2).sum())
    return first_line, imported, time.time(), socket.gethostname()


@app.function(scaledown_window=1, timeout=600)
def read_torch(passes: int) -> dict:
    """Read every file of the installed torch package `passes` times (see tree_reader)."""
    return tree_reader.read_passes("torch", passes)


@app.function(image=ember.Image.debian_slim(), scaledown_window=1)
def small_noop() -> str:
    return socket.gethostname()
