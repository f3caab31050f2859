"""Containers import the SDK (and the harness) without gRPC, protobuf, rich, SQL or asyncio, nor
what only the client side needs (packing the app's source)."""

import json
import subprocess
import sys

import pytest

HEAVY = ("grpc", "google.protobuf", "rich", "sqlalchemy", "asyncio", "tarfile", "pathlib")


def loaded_after(statement: str) -> list[str]:
    code = (
        f"import json, sys\n{statement}\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(done.stdout)


def test_the_check_sees_a_heavy_module_when_one_is_imported() -> None:
    assert loaded_after("import asyncio") == ["asyncio"]


@pytest.mark.parametrize("statement", ["import ember", "import ember.harness.runtime"])
def test_light_imports_load_no_heavy_module(statement: str) -> None:
    assert loaded_after(statement) == []
