"""Entrypoints whose output `ember run` must get right: an async one, and ones that fail."""

import threading

import ember

app = ember.App("e2e-cli-messages")


@app.function()
async def double(x: int) -> int:
    print(f"doubling {x}")
    return 2 * x


@app.function()
def count_up(n: int):
    yield from range(n)


@app.function()
def reject(x: int) -> int:
    raise ValueError(f"rejected {x}")


@app.local_entrypoint()
async def async_main(n: int = 3) -> None:
    """As Modal's hello_world_async.py and generators_async.py do it."""
    print("remote", await double.remote.aio(21))
    print("map", [x async for x in double.map.aio(range(n))])
    print("gen", [x async for x in count_up.remote_gen.aio(n)])
    print("blocking", double.remote(5))  # a blocking call still works inside one


def check_input(x: int) -> int:
    return reject.remote(x)


@app.local_entrypoint()
def fails_remotely() -> None:
    check_input(7)


@app.local_entrypoint()
async def fails_remotely_async() -> None:
    await reject.remote.aio(8)


@app.local_entrypoint()
def fails_locally() -> None:
    raise LookupError("nothing to look up here")


@app.local_entrypoint()
def sends_a_lock() -> None:
    double.remote(threading.Lock())


@app.function()
def returns_a_lock() -> threading.Lock:
    return threading.Lock()


@app.local_entrypoint()
def gets_a_lock() -> None:
    returns_a_lock.remote()


@app.function()
def yields_a_lock():
    yield 1
    yield threading.Lock()


@app.local_entrypoint()
def gets_a_yielded_lock() -> None:
    for _ in yields_a_lock.remote_gen():
        pass
