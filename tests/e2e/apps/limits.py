"""Functions that break on purpose: memory, time, crashes, retries."""

import os
import socket
import time

import ember

app = ember.App("e2e-limits")


@app.function(memory=128)
def allocate(mb: int) -> str:
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return socket.gethostname()


@app.function(timeout=2)
def sleep_then_host(seconds: float) -> str:
    time.sleep(seconds)
    return socket.gethostname()


@app.function(retries=ember.Retries(max_retries=2, initial_delay=0.5, backoff_coefficient=1.0))
def crash_on(host: str, token: str) -> str:
    """Dies (as a segfault would: no exception, the process is gone) when it runs in the container
    named `host`; else returns its container's name. Each attempt prints a line naming both."""
    hostname = socket.gethostname()
    print(f"attempt {token} on {hostname}", flush=True)
    if hostname == host:
        os._exit(139)
    return hostname


@app.function(retries=1)
def always_crash() -> None:
    os._exit(1)


_tokens_seen: set[str] = set()  # by this container's process


@app.function(retries=ember.Retries(max_retries=3, initial_delay=0.1, backoff_coefficient=1.0))
def raise_once(token: str) -> str:
    """Raises the first time this container sees `token`: only a retry can return "done"."""
    if token not in _tokens_seen:
        _tokens_seen.add(token)
        raise RuntimeError("not yet")
    return "done"


@app.function(retries=2)
def slow_square(x: int) -> int:
    time.sleep(3)
    return x * x


@app.function(memory=10_000_000)
def too_big() -> None:
    pass
