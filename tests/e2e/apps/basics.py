"""Functions the end-to-end tests call through real containers."""

import os
import socket
import time

import ember

app = ember.App("e2e-basics")


class CustomError(Exception):
    pass


@app.function()
def square(x: int) -> int:
    print(f"squaring {x}")
    return x * x


@app.function()
def add(a: int, b: int = 0) -> int:
    return a + b


@app.function()
def fail(x: int) -> int:
    raise ValueError(f"bad input {x}")


@app.function()
def fail_custom() -> None:
    raise CustomError("a custom failure")


@app.function()
def fail_with_container_only_class() -> None:
    """Raise an exception whose class exists only inside the container."""
    import importlib
    import sys

    with open("/tmp/container_only.py", "w") as module:
        module.write("class Problem(Exception):\n    pass\n")
    sys.path.insert(0, "/tmp")
    raise importlib.import_module("container_only").Problem("made inside the container")


@app.function()
def make_adder(n: int):
    """Return a closure: the standard pickler refuses it, so it comes back through cloudpickle."""
    return lambda x: x + n


@app.function()
def plain_record(n: int) -> dict:
    """A plain result, which the standard pickler writes."""
    return {"n": n, "squares": [i * i for i in range(n)], "raw": bytes(range(n))}


@app.function()
def countdown(n: int):
    yield from range(n, 0, -1)


@app.function()
async def async_double(x: int) -> int:
    return 2 * x


@app.function()
def inside(host_path: str = "/nonexistent") -> dict:
    """What the function sees of its container."""
    return {
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "host_path_visible": os.path.exists(host_path),
        "etc_hostname_exists": os.path.exists("/etc/hostname"),
        "source_writable": os.access("/app", os.W_OK),
        "uid": os.getuid(),
    }


@app.function()
def size_of(data: bytes) -> int:
    return len(data)


@app.function()
def make_bytes(n: int) -> bytes:
    return b"x" * n


@app.function()
def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.function()
def held_until_released(tag: str, held: bool) -> str:
    """Returns `tag`. A held input first marks its container with the file /tmp/<tag>.held, then
    waits for /tmp/<tag>.go, which the test puts into the container from outside (or 60 s)."""
    if held:
        open(f"/tmp/{tag}.held", "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(f"/tmp/{tag}.go") and time.monotonic() < deadline:
            time.sleep(0.01)
    return tag
