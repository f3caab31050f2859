"""Async written once: the blocking API and `.aio` are derived from one async implementation.

Every SDK coroutine runs on one event loop in a background thread, which owns the gRPC channel.
A blocking call submits the coroutine there and waits; `.aio` submits it and awaits from the
caller's own loop. Async generators are driven item by item the same way.

    class Function:
        @synchronize
        async def remote(self, *args, **kwargs): ...

    f.remote(1)              # blocking
    await f.remote.aio(1)    # from async code
"""

from __future__ import annotations

import functools
import threading
import types
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def sdk_loop() -> asyncio.AbstractEventLoop:
    import asyncio  # not at import time: containers import the SDK and never need it

    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            thread = threading.Thread(target=_loop.run_forever, name="ember-sdk", daemon=True)
            thread.start()
        return _loop


def _in_sdk_loop() -> bool:
    import asyncio

    try:
        return asyncio.get_running_loop() is _loop
    except RuntimeError:
        return False


def run_blocking(coroutine: Coroutine[Any, Any, T]) -> T:
    import asyncio

    if _in_sdk_loop():
        coroutine.close()
        raise RuntimeError("a blocking ember call was made from ember's own event loop")
    return asyncio.run_coroutine_threadsafe(coroutine, sdk_loop()).result()


async def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    import asyncio

    if _in_sdk_loop():
        return await coroutine
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, sdk_loop()))


def iterate_blocking(generator: AsyncIterator[T]) -> Iterator[T]:
    try:
        while True:
            try:
                yield run_blocking(generator.__anext__())  # type: ignore[arg-type]
            except StopAsyncIteration:
                return
    finally:
        run_blocking(generator.aclose())  # type: ignore[attr-defined]


async def iterate_async(generator: AsyncIterator[T]) -> AsyncIterator[T]:
    try:
        while True:
            try:
                yield await run_async(generator.__anext__())  # type: ignore[arg-type]
            except StopAsyncIteration:
                return
    finally:
        await run_async(generator.aclose())  # type: ignore[attr-defined]


class _BoundMethod(Generic[T]):
    def __init__(self, function: Callable[..., Any], instance: Any) -> None:
        self._function = function
        self._instance = instance
        functools.update_wrapper(self, function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self._function(self._instance, *args, **kwargs)
        if isinstance(result, types.AsyncGeneratorType):
            return iterate_blocking(result)
        return run_blocking(result)

    def aio(self, *args: Any, **kwargs: Any) -> Any:
        result = self._function(self._instance, *args, **kwargs)
        if isinstance(result, types.AsyncGeneratorType):
            return iterate_async(result)
        return run_async(result)


class synchronize(Generic[T]):
    """Decorate an async method (or async generator method) to get `method()` and `method.aio()`."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self._function = function
        functools.update_wrapper(self, function)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return _BoundMethod(self._function, instance)
