"""ember: write a Python function, add a decorator, run it in containers on your own machines.

    import ember

    app = ember.App("hello")

    @app.function()
    def square(x: int) -> int:
        return x * x

The names here follow Modal's where the feature exists, so `import ember as modal` works.
"""

from ember.errors import (
    AlreadyExistsError,
    ConnectionError,
    Error,
    ExecutionError,
    FunctionTimeoutError,
    InputCancelledError,
    InvalidError,
    NotFoundError,
    OutOfMemoryError,
    RemoteError,
    SerializationError,
    TimeoutError,
)
from ember.sdk import (
    App,
    Function,
    FunctionCall,
    Image,
    Retries,
    enable_output,
)

__version__ = "0.1.0"

__all__ = [
    "AlreadyExistsError",
    "App",
    "ConnectionError",
    "Error",
    "ExecutionError",
    "Function",
    "FunctionCall",
    "FunctionTimeoutError",
    "Image",
    "InputCancelledError",
    "InvalidError",
    "NotFoundError",
    "OutOfMemoryError",
    "RemoteError",
    "Retries",
    "SerializationError",
    "TimeoutError",
    "enable_output",
]
