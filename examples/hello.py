"""The first ember app: one function, run in containers four ways.

ember run examples/hello.py --n 1000
"""

import ember

app = ember.App("hello")


@app.function(cpu=0.5, memory=256, timeout=60, retries=2)
def square(x: int) -> int:
    print(f"squaring {x}")  # shows up on the caller's terminal
    return x * x


@app.local_entrypoint()
def main(n: int = 10):
    print(square.local(3), square.remote(4))
    print(sum(square.map(range(n))))
    print(square.spawn(5).get(timeout=30))
