"""ember: write a Python function, add a decorator, run it in containers on your own machines.

    import ember

    app = ember.App("hello")

    @app.function()
    def square(x: int) -> int:
        return x * x

The names here follow Modal's where the feature exists, so `import ember as modal` works.

Each name is imported when first used (PEP 562): every container imports ember on its cold start,
and a module it does not use (`Image` in most containers) should cost it nothing.
"""

import typing

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

if typing.TYPE_CHECKING:
    from ember.sdk.app import App
    from ember.sdk.function import Function, FunctionCall
    from ember.sdk.image import Image
    from ember.sdk.output import enable_output
    from ember.sdk.retries import Retries

__version__ = "0.1.0"

# The SDK's public names, by the module that defines each.
_SDK_NAMES = {
    "App": "ember.sdk.app",
    "Function": "ember.sdk.function",
    "FunctionCall": "ember.sdk.function",
    "Image": "ember.sdk.image",
    "Retries": "ember.sdk.retries",
    "enable_output": "ember.sdk.output",
}


def __getattr__(name: str) -> object:
    import importlib

    module = _SDK_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'ember' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # asked once: later lookups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_SDK_NAMES})


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
