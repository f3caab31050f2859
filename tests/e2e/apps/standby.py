"""Functions that say how old their container's process was when they ran, to tell a container
started for the call from a standby started before it."""

import os
import time
from pathlib import Path

import ember

app = ember.App("e2e-standby")


def _process_age_s() -> float:
    """Seconds since the container's first process (the harness) started."""
    start_ticks = int(Path("/proc/1/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    return uptime_s - start_ticks / os.sysconf("SC_CLK_TCK")


def _seen() -> dict:
    return {
        "age_s": _process_age_s(),
        "at": time.time(),
        "container_id": os.environ.get("EMBER_CONTAINER_ID"),
        "module": os.environ.get("EMBER_MODULE"),
        "source_files": sorted(p.name for p in Path("/app").iterdir()),
    }


@app.function(scaledown_window=1)
def first() -> dict:
    return _seen()


@app.function(scaledown_window=1)
def second() -> dict:
    """Of the same shape as `first` (image and limits): a standby of one serves the other."""
    return _seen()


@app.function(scaledown_window=1, memory=384)
def other_shape() -> dict:
    return _seen()


@app.function(scaledown_window=1, max_containers=6)
def busy(x: int) -> int:
    """An input long enough that a parallel map spreads over several containers."""
    time.sleep(0.02)
    return x
