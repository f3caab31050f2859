"""`synchronize`: one async implementation gives a blocking method and `.aio`."""

import threading

import pytest

from ember.sdk._sync import run_blocking, sdk_loop, synchronize


class Counter:
    def __init__(self) -> None:
        self.threads: list[str] = []

    @synchronize
    async def add(self, a: int, b: int = 0) -> int:
        """Add two numbers."""
        self.threads.append(threading.current_thread().name)
        return a + b

    @synchronize
    async def count(self, n: int):
        for i in range(n):
            self.threads.append(threading.current_thread().name)
            yield i

    @synchronize
    async def fail(self) -> None:
        raise KeyError("nope")


def test_a_coroutine_method_blocks_and_returns_its_value() -> None:
    counter = Counter()
    assert counter.add(2, b=3) == 5
    assert counter.threads == ["ember-sdk"]  # it ran on the SDK's own loop


async def test_aio_of_a_coroutine_method_is_awaitable() -> None:
    counter = Counter()
    assert await counter.add.aio(4, b=1) == 5
    assert counter.threads == ["ember-sdk"]


def test_an_async_generator_method_is_iterated_blocking() -> None:
    counter = Counter()
    assert list(counter.count(3)) == [0, 1, 2]
    assert counter.threads == ["ember-sdk"] * 3


async def test_aio_of_an_async_generator_method_is_iterated_async() -> None:
    counter = Counter()
    assert [i async for i in counter.count.aio(3)] == [0, 1, 2]
    assert counter.threads == ["ember-sdk"] * 3


def test_exceptions_come_through_unchanged() -> None:
    with pytest.raises(KeyError, match="nope"):
        Counter().fail()


async def test_exceptions_come_through_aio_unchanged() -> None:
    with pytest.raises(KeyError, match="nope"):
        await Counter().fail.aio()


def test_the_method_keeps_its_name_and_docstring() -> None:
    counter = Counter()
    assert counter.add.__name__ == "add"
    assert counter.add.__doc__ == "Add two numbers."
    assert isinstance(Counter.__dict__["add"], synchronize)


def test_a_blocking_call_from_the_sdk_loop_is_refused() -> None:
    async def nested() -> int:
        return Counter().add(1)

    with pytest.raises(RuntimeError, match="from ember's own event loop"):
        run_blocking(nested())


def test_the_sdk_loop_is_one_loop() -> None:
    assert sdk_loop() is sdk_loop()
