"""A plain script: `python script.py` runs the app itself, as `ember run` would."""

import ember

app = ember.App("e2e-script")


@app.function()
def square(x: int) -> int:
    print(f"squaring {x} in a container")
    return x * x


if __name__ == "__main__":
    with ember.enable_output(), app.run():
        print("result", square.remote(4))
