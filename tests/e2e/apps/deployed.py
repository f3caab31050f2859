"""An app the tests deploy and then call by name from other processes."""

import ember

app = ember.App("e2e-deployed")


@app.function()
def triple(x: int) -> int:
    print(f"tripling {x}")
    return 3 * x
