"""Containers import the SDK (and the harness) without gRPC, protobuf, rich, SQL or asyncio, nor
what only the client side needs (packing the app's source); and a container's whole path to its
first result, from the harness's imports to a pickled result, loads none of the standard modules
that cost milliseconds each at every cold start (cloudpickle brings most of them)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("grpc", "google.protobuf", "rich", "sqlalchemy", "asyncio", "tarfile", "pathlib")
SLOW_STANDARD = ("cloudpickle", "dataclasses", "inspect", "logging", "traceback")

APP = """
import ember

app = ember.App("hygiene")
image = ember.Image.debian_slim().pip_install("numpy").env({"MODE": "fast"})


@app.function(image=image, retries=ember.Retries(2))
def square(x):
    return x * x
"""

# What the harness runs at a cold start, in order: its imports, the app's module, the input's
# arguments unpickled (as the SDK pickled them), the function, its result pickled and framed.
COLD_PATH = """
import pickle
import ember.harness.runtime
import hygiene_app
from ember.proto import harness_frames as frames
from ember.sdk.serialization import deserialize, serialize
args, kwargs = deserialize(pickle.dumps(((3,), {})))
value = hygiene_app.square.get_raw_f()(*args, **kwargs)
frames.encode(frames.Result("in-0-0", 0, frames.SUCCESS, serialize(value, what="return value"), "", ""))
"""


def loaded_after(
    statement: str, modules: tuple[str, ...] = HEAVY, cwd: Path | None = None
) -> list[str]:
    code = (
        f"import json, sys\n{statement}\n"
        f"print(json.dumps(sorted(m for m in {modules!r} if m in sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=cwd,
    )
    return json.loads(done.stdout)


def test_the_check_sees_a_heavy_module_when_one_is_imported() -> None:
    assert loaded_after("import asyncio") == ["asyncio"]


@pytest.mark.parametrize("statement", ["import ember", "import ember.harness.runtime"])
def test_light_imports_load_no_heavy_module(statement: str) -> None:
    assert loaded_after(statement) == []


def test_the_check_sees_a_slow_standard_module_when_one_is_imported() -> None:
    assert loaded_after("import dataclasses", SLOW_STANDARD) == ["dataclasses", "inspect"]


def test_a_cold_start_loads_no_slow_standard_module(tmp_path: Path) -> None:
    (tmp_path / "hygiene_app.py").write_text(APP)
    assert loaded_after(COLD_PATH, HEAVY + SLOW_STANDARD, cwd=tmp_path) == []
