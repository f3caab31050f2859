"""The cold-start benchmark's app: a function that reports when its code first ran, and in what.

Its containers stop after the shortest scaledown window ember allows (1 s), so the benchmark can
wait for the function to be back at zero containers before each timed call.

Besides the time of its first line, it returns what tells a standby from a container started for
it: the container's hostname (the worker names a standby `sb-…`, a container started for its
function by its control-plane id, `ta-…`) and the age of the container's first process (pid 1,
the harness): a fresh container's is younger than the call, a standby's older. Both are read
after the clock, so they cost the figure nothing.
"""

import os
import socket
import time

import ember

app = ember.App("bench-cold")


def container_age_s() -> float:
    """Seconds since the container's first process started (boot clock, 1/CLK_TCK steps)."""
    with open("/proc/1/stat") as stat:
        started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as uptime:
        now_s = float(uptime.read().split()[0])
    return now_s - started_ticks / os.sysconf("SC_CLK_TCK")


@app.function(scaledown_window=1)
def first_line() -> tuple[float, str, float]:
    ran_at = time.time()
    return ran_at, socket.gethostname(), container_age_s()
