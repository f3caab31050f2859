"""A real image from PyPI (scipy, with numpy), whose containers each import much of it: many
shared libraries opened at once by several containers starting together.

`EMBER_E2E_FANOUT_ROUND` (read when the file is imported) makes the image a new one for each
round of a test: the content is the same, but no start of it has recorded its reads yet. The
image carries the variable too, so the file defines the same image inside its containers."""

import os
import time

import ember

ROUND = os.environ.get("EMBER_E2E_FANOUT_ROUND", "0")
MAX_CONTAINERS = 6

scipy_image = ember.Image.debian_slim().pip_install("scipy")
image = scipy_image.env({"EMBER_E2E_FANOUT_ROUND": ROUND})

# Modules whose imports load most of scipy's and numpy's extension modules (and OpenBLAS).
MODULES = (
    "numpy",
    "numpy.linalg",
    "numpy.fft",
    "numpy.random",
    "scipy.linalg",
    "scipy.sparse",
    "scipy.sparse.linalg",
    "scipy.sparse.csgraph",
    "scipy.special",
    "scipy.fft",
    "scipy.integrate",
    "scipy.interpolate",
    "scipy.ndimage",
    "scipy.optimize",
    "scipy.signal",
    "scipy.spatial",
    "scipy.stats",
    "scipy.cluster",
    "scipy.io",
)

app = ember.App("e2e-fanout")


def _shared_libraries() -> int:
    """How many distinct shared objects this process has mapped."""
    with open("/proc/self/maps") as maps:
        return len({line.split()[-1] for line in maps if ".so" in line.rsplit("/", 1)[-1]})


@app.function(image=image, max_containers=MAX_CONTAINERS, scaledown_window=2)
def import_everything(number: int) -> dict:
    import importlib

    failed = {}
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as error:  # what failed, and why, for the test to show
            failed[name] = f"{type(error).__name__}: {error}"
    time.sleep(0.5)  # long enough inputs that the queue calls for every container
    return {
        "number": number,
        "container": os.environ.get("EMBER_CONTAINER_ID", ""),
        "failed": failed,
        "shared_libraries": _shared_libraries(),
    }
