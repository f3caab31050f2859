"""The warm round-trip benchmark's app: one no-op function.

A long scaledown window keeps its container warm between the warm-up and the timed calls.
"""

import ember

app = ember.App("bench-noop")


@app.function(scaledown_window=600)
def noop() -> None:
    return None
