"""`code_kinds` answers as `inspect` does, for every kind of callable a user may decorate."""

import functools
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from ember.sdk import code_kinds


def plain(x: int) -> int:
    return x


async def coroutine(x: int) -> int:
    return x


def generator(x: int) -> Any:
    yield x


async def async_generator(x: int) -> Any:
    yield x


class Methods:
    def plain(self) -> None: ...

    async def coroutine(self) -> None: ...

    def generator(self) -> Any:
        yield 1

    async def async_generator(self) -> Any:
        yield 1

    def __call__(self) -> Any:
        yield 1  # a generator method, but the instance itself is not a generator function


CALLABLES: list[Callable[..., Any]] = [
    plain,
    coroutine,
    generator,
    async_generator,
    lambda x: x,
    functools.partial(coroutine, 1),
    functools.partial(generator, 1),
    functools.partial(functools.partial(async_generator), 1),
    Methods().plain,
    Methods().coroutine,
    Methods().generator,
    Methods().async_generator,
    Methods(),
    print,
    len,
    Methods,
]


@pytest.mark.parametrize("f", CALLABLES, ids=lambda f: repr(f)[:60])
def test_kinds_agree_with_inspect(f: Callable[..., Any]) -> None:
    assert code_kinds.is_coroutine_function(f) == inspect.iscoroutinefunction(f)
    assert code_kinds.is_async_generator_function(f) == inspect.isasyncgenfunction(f)
    assert code_kinds.is_generator_function(f) == (
        inspect.isgeneratorfunction(f) or inspect.isasyncgenfunction(f)
    )


def test_each_kind_is_told_apart() -> None:
    kinds = [
        (
            code_kinds.is_coroutine_function(f),
            code_kinds.is_async_generator_function(f),
            code_kinds.is_generator_function(f),
        )
        for f in (plain, coroutine, generator, async_generator)
    ]
    assert kinds == [
        (False, False, False),
        (True, False, False),
        (False, False, True),
        (False, True, True),
    ]
