"""Where ember keeps its state, and how a process finds the control plane.

Everything comes from the environment, so a test or a second cluster can point elsewhere:

- `EMBER_DATA_DIR`: the data directory (default `~/.local/share/ember`), home of the local
  cluster, the base image and the worker's containers. It lives outside any checkout so that slow
  things (the base image) are built once per machine.
- `EMBER_IMAGE_DIR`: where built images live (default `<data dir>/images`); several data
  directories (a test session's, say) may share one, so the base image is built once per machine.
- `EMBER_SERVER_URL`: a control plane to use instead of the local cluster (`host:port`).
- `EMBER_IMAGE_STORE`: the chunk store holding built images, as `ember.imagefs.store.open_store`
  takes it (default: the directory `imagestore` in the control plane's data directory).
- `EMBER_OUTPUT_RETENTION_S`: how long the control plane keeps a finished call's inputs and
  outputs (default 7 days, as Modal keeps a spawned call's result), and blobs no row names.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    configured = os.environ.get("EMBER_DATA_DIR")
    path = Path(configured) if configured else Path.home() / ".local" / "share" / "ember"
    return path.expanduser().absolute()


def image_dir() -> Path:
    configured = os.environ.get("EMBER_IMAGE_DIR")
    return Path(configured).expanduser().absolute() if configured else data_dir() / "images"


def server_url() -> str | None:
    return os.environ.get("EMBER_SERVER_URL") or None


# Seconds a finished call's results stay readable: a week, so that a job spawned on Friday can
# be collected on Monday, and the length Modal promises for `FunctionCall.get()`.
DEFAULT_OUTPUT_RETENTION_S = 7 * 24 * 3600.0


def output_retention_s() -> float:
    configured = os.environ.get("EMBER_OUTPUT_RETENTION_S")
    if not configured:
        return DEFAULT_OUTPUT_RETENTION_S
    try:
        value = float(configured)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ValueError(
            f"EMBER_OUTPUT_RETENTION_S={configured!r} is not a number of seconds above 0;"
            f" unset it for the default ({DEFAULT_OUTPUT_RETENTION_S:.0f}, 7 days)"
        )
    return value


def image_store_url(control_data_dir: Path) -> str:
    return os.environ.get("EMBER_IMAGE_STORE") or (control_data_dir / "imagestore").as_uri()
