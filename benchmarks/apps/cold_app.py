"""The cold-start benchmark's app: a function that reports when its code first ran.

Its containers stop after the shortest scaledown window ember allows (1 s), so the benchmark can
wait for the function to be back at zero containers before each timed call.
"""

import time

import ember

app = ember.App("bench-cold")


@app.function(scaledown_window=1)
def first_line() -> float:
    return time.time()
