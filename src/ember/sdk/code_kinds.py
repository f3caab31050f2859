"""Which kind of function a function is, read from its code's flags as `inspect` reads them
(`inspect.isgeneratorfunction` and its kin), without importing `inspect`: the decorator and the
harness both ask at every cold start, and `inspect` takes milliseconds to import. A test holds
these to `inspect`'s answers."""

from __future__ import annotations

import functools
import types

# CPython's code flags (inspect.CO_COROUTINE, CO_GENERATOR, CO_ASYNC_GENERATOR).
_CO_GENERATOR = 0x20
_CO_COROUTINE = 0x80
_CO_ASYNC_GENERATOR = 0x200


def _code_flags(f: object) -> int:
    """The flags of the code a function, method or partial of one runs (a compiled function with
    a `__code__`, such as Cython's, counts); 0 for other callables."""
    while True:
        if isinstance(f, types.MethodType):
            f = f.__func__
        elif isinstance(f, functools.partial):
            f = f.func
        else:
            break
    code = getattr(f, "__code__", None)
    return code.co_flags if isinstance(code, types.CodeType) else 0


def is_coroutine_function(f: object) -> bool:
    return bool(_code_flags(f) & _CO_COROUTINE)


def is_async_generator_function(f: object) -> bool:
    return bool(_code_flags(f) & _CO_ASYNC_GENERATOR)


def is_generator_function(f: object) -> bool:
    """A generator function, sync or async."""
    return bool(_code_flags(f) & (_CO_GENERATOR | _CO_ASYNC_GENERATOR))
