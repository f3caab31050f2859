"""The fan-out benchmark's app: a no-op that runs in exactly two containers, kept warm.

`hold` > 0 turns an input into a probe: it sleeps that long and names its container, so the
benchmark can see both containers serving before it starts the clock.
"""

import socket
import time

import ember

app = ember.App("bench-fanout")

CONTAINERS = 2


@app.function(min_containers=CONTAINERS, max_containers=CONTAINERS, scaledown_window=600)
def fan(x: int, hold: float = 0.0) -> object:
    if hold:
        time.sleep(hold)
        return socket.gethostname()
    return x
