"""Functions a map runs while the tests kill parts of the cluster under it."""

import time

import ember

app = ember.App("e2e-healing")


@app.function(max_containers=4)
def square(x: int) -> int:
    """Default retries (none): a run lost with its host must not need one."""
    time.sleep(0.002)
    return x * x


@app.function(max_containers=4, retries=3)
def square_with_retries(x: int) -> int:
    time.sleep(0.002)
    return x * x


@app.function()
def hello(name: str) -> str:
    return f"hello {name}"


@app.local_entrypoint()
def greet(name: str = "world") -> None:
    print(hello.remote(name))
