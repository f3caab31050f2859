"""A value that does not pickle: the message says which way it was going, what it is, and the fix."""

import pickle
import re
import sys
import threading

import pytest

from ember import SerializationError
from ember.sdk._calls import encode_args
from ember.sdk.serialization import deserialize, serialize


def failure(value: object, **what: str) -> str:
    with pytest.raises(SerializationError) as caught:
        serialize(value, **what)  # type: ignore[arg-type]
    return str(caught.value)


def test_plain_values_round_trip() -> None:
    value = ((1, "two"), {"three": [3.0, None]})
    assert deserialize(serialize(value)) == value


def test_arguments_by_default_say_they_were_going_into_a_container() -> None:
    message = failure(((1, threading.Lock()), {}))
    assert message.startswith(
        "the arguments of the call cannot be pickled to send to the function's container: "
        "_thread.lock at args[1] (cannot pickle '_thread.lock' object); pass plain data"
    )


def test_a_keyword_argument_is_named_by_its_keyword_and_where_inside_it() -> None:
    message = failure(((), {"options": {"guard": threading.Lock()}}))
    assert "_thread.lock at kwargs['options']['guard']" in message


async def test_the_sdk_sending_arguments_gets_the_arguments_message() -> None:
    # The SDK's own caller, which passes no `what`: pickling fails before the connection is used.
    with pytest.raises(SerializationError, match=re.escape("_thread.lock at args[0]")) as caught:
        await encode_args(None, (threading.Lock(),), {})  # type: ignore[arg-type]
    assert str(caught.value).startswith("the arguments of the call cannot be pickled")


def test_a_return_value_says_the_function_returned_it() -> None:
    message = failure(threading.Lock(), what="return value")
    assert message.startswith(
        "the function returned a value that cannot be pickled to send back from its container: "
        "_thread.lock (cannot pickle '_thread.lock' object); return plain data"
    )
    assert "to the function's container" not in message


def test_a_return_value_names_the_part_that_does_not_pickle() -> None:
    message = failure({"ok": 1, "lock": [threading.Lock()]}, what="return value")
    assert "_thread.lock at result['lock'][0]" in message


def test_a_yielded_item_says_the_function_yielded_it() -> None:
    message = failure((x for x in ()), what="yielded item")
    assert message.startswith(
        "the function yielded an item that cannot be pickled to send back from its container: "
        "generator (cannot pickle 'generator' object); yield plain data"
    )


class Holder:
    def __init__(self) -> None:
        self.lock = threading.Lock()


def test_an_object_holding_something_unpicklable_is_named_with_what_it_holds() -> None:
    message = failure(Holder(), what="return value")
    assert f"{__name__}.Holder (cannot pickle '_thread.lock' object)" in message


def test_an_exception_says_the_function_raised_it() -> None:
    error = ValueError(threading.Lock())
    message = failure(error, what="exception")
    assert message.startswith(
        "the function raised an exception that cannot be pickled to send back from its "
        "container: ValueError (cannot pickle '_thread.lock' object); raise an exception whose "
        "arguments are plain data"
    )


def test_a_result_the_standard_pickler_refuses_travels_by_value() -> None:
    def local_add(a: int, b: int) -> int:  # a local function: only cloudpickle pickles it
        return a + b

    data = serialize(local_add, what="return value")
    assert deserialize(data)(2, 3) == 5


def test_a_result_is_written_by_the_standard_pickler_when_it_can() -> None:
    value = {"numbers": [1, 2.5], "text": "x", "raw": b"\x00"}
    data = serialize(value, what="return value")
    assert data == pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    assert deserialize(data) == value


def test_arguments_defined_in_the_callers_main_travel_by_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A class of the caller's script (`__main__`): the standard pickler would write a reference
    # to `__main__.Point`, which the container's `__main__` (the harness) does not have.
    point_class = type("Point", (), {"__module__": "__main__", "x": 1})
    monkeypatch.setattr(sys.modules["__main__"], "Point", point_class, raising=False)
    data = serialize(((point_class(),), {}))
    monkeypatch.delattr(sys.modules["__main__"], "Point")  # as on the container's side
    (point,), _ = deserialize(data)
    assert point.x == 1
