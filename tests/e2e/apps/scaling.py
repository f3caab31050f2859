"""Functions whose container counts the tests watch."""

import socket
import time

import ember

app = ember.App("e2e-scaling")


@app.function(max_containers=2, scaledown_window=2)
def busy_host(seconds: float) -> str:
    time.sleep(seconds)
    return socket.gethostname()


@app.function(min_containers=1, scaledown_window=2)
def warm_host() -> str:
    return socket.gethostname()
