"""An entrypoint that runs until interrupted."""

import time

import ember

app = ember.App("e2e-long")


@app.function()
def ping() -> str:
    return "pong"


@app.local_entrypoint()
def main() -> None:
    print(ping.remote(), flush=True)
    time.sleep(120)
