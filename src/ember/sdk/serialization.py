"""Values on the wire: arguments, results and exceptions.

Arguments are pickled with cloudpickle: they come from the caller's script or notebook, whose own
functions and classes (in `__main__`) exist nowhere else and must travel by value. What a
container sends back (results, yielded items, exceptions) comes from modules the caller has too,
which the standard pickler writes as cloudpickle does, by reference; it is tried first, and
cloudpickle takes what it refuses (a lambda, a local function or class). That spares every cold
start cloudpickle's import (it brings `dataclasses`, `inspect`, `logging` and more: tens of
milliseconds, measured), and cloudpickle is imported only when needed. Anything either wrote
loads with the standard `pickle.loads` (which imports cloudpickle itself if a value needs it).

A value that does not pickle is an error the user can fix, so its message says which way the
value was going (arguments into a function's container, or a result, yielded item or exception
coming back out of one), what in it does not pickle, and what to do instead.
"""

from __future__ import annotations

import pickle
from typing import Any, Literal

from ember import errors

# What a pickled value is, which decides the direction named in its error message: the SDK sends
# arguments into a container; the harness sends the rest back out of it.
Sent = Literal["arguments", "return value", "yielded item", "exception"]

_PROBLEM: dict[str, tuple[str, str]] = {
    # what: (what went wrong, what to do instead)
    "arguments": (
        "the arguments of the call cannot be pickled to send to the function's container",
        "pass plain data (numbers, strings, lists, dicts, dataclasses) and make objects such as "
        "locks, open files, connections or clients inside the function",
    ),
    "return value": (
        "the function returned a value that cannot be pickled to send back from its container",
        "return plain data (numbers, strings, lists, dicts, dataclasses); keep objects such as "
        "locks, open files, connections or clients inside the function",
    ),
    "yielded item": (
        "the function yielded an item that cannot be pickled to send back from its container",
        "yield plain data (numbers, strings, lists, dicts, dataclasses); keep objects such as "
        "locks, open files, connections or clients inside the function",
    ),
    "exception": (
        "the function raised an exception that cannot be pickled to send back from its container",
        "raise an exception whose arguments are plain data (numbers, strings, lists, dicts)",
    ),
}

# How a culprit's place is written, inside arguments (`args[0]`, `kwargs['x']`) or a result.
_LABEL: dict[str, str] = {
    "arguments": "arguments",
    "return value": "result",
    "yielded item": "item",
    "exception": "exception",
}

_SEARCH_DEPTH = 4  # how deep into lists, tuples and dicts the culprit is looked for


def type_name(value: Any) -> str:
    """`module.Qualname` of a value's type, as a user would import it (`_thread.lock`, `int`)."""
    kind = type(value)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def _dumps(value: Any, what: Sent) -> bytes:
    if what != "arguments":
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            pass  # cloudpickle may still pickle it (by value)
    import cloudpickle

    return cloudpickle.dumps(value)


def _pickles(value: Any) -> bool:
    import cloudpickle

    try:
        cloudpickle.dumps(value)
    except Exception:
        return False
    return True


def _culprit(value: Any, path: str, depth: int) -> tuple[str, Any]:
    """The innermost part of an unpicklable `value` that does not pickle, and where it is: a lock
    in a dict in a list is the lock, at `[0]['key']`."""
    if depth <= 0:
        return path, value
    if isinstance(value, dict):
        parts: list[tuple[str, Any]] = [(f"{path}[{key!r}]", item) for key, item in value.items()]
    elif isinstance(value, list | tuple | set | frozenset):
        parts = [(f"{path}[{index}]", item) for index, item in enumerate(value)]
    else:
        return path, value
    for part_path, part in parts:
        if not _pickles(part):
            return _culprit(part, part_path, depth - 1)
    return path, value


def _where_in_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Any]:
    """The culprit among a call's arguments, at `args[1]` or `kwargs['name']` and below."""
    named = [(f"args[{index}]", arg) for index, arg in enumerate(args)]
    named += [(f"kwargs[{name!r}]", arg) for name, arg in kwargs.items()]
    for where, arg in named:
        if not _pickles(arg):
            path, culprit = _culprit(arg, "", _SEARCH_DEPTH)
            return where + path, culprit
    return "", (args, kwargs)


def _describe_failure(value: Any, what: Sent, error: Exception) -> str:
    problem, fix = _PROBLEM[what]
    is_call = (
        what == "arguments"
        and isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], tuple)
        and isinstance(value[1], dict)
    )
    if is_call:
        where, culprit = _where_in_arguments(*value)
    else:
        where, culprit = _culprit(value, "", _SEARCH_DEPTH)
        where = f"{_LABEL[what]}{where}" if where else ""
    found = f"{type_name(culprit)} at {where}" if where else type_name(culprit)
    return f"{problem}: {found} ({error}); {fix}"


def serialize(value: Any, *, what: Sent = "arguments") -> bytes:
    """Pickle a value for the wire; `what` it is names the direction in the error message."""
    try:
        return _dumps(value, what)
    except Exception as error:
        raise errors.SerializationError(_describe_failure(value, what, error)) from None


def deserialize(data: bytes) -> Any:
    return pickle.loads(data)


def serialize_exception(error: BaseException) -> bytes | None:
    """The pickled exception, or None when it does not pickle (its text still travels)."""
    try:
        data = _dumps(error, "exception")
        pickle.loads(data)
    except Exception:
        return None
    return data
