"""Decoding a function's result into its value or the error it reports (inline payloads only)."""

import pickle
import sys
import types

import pytest

import ember
from ember.control.store.calls import CALL_ID
from ember.proto import api_pb2
from ember.sdk._calls import decode_error, decode_result, is_error, new_call_id

# Inline payloads never touch the connection.
NO_CONNECTION = None


def result(status: int, data: bytes | None = None, text: str = "", traceback: str = ""):
    payload = api_pb2.Payload(data=data) if data is not None else None
    return api_pb2.Result(status=status, data=payload, exception_text=text, traceback=traceback)


def unpicklable_here() -> bytes:
    """A pickled exception whose class lives in a module this process does not have."""
    module = types.ModuleType("ember_test_gone")

    class GoneError(Exception):
        pass

    GoneError.__module__ = module.__name__
    GoneError.__qualname__ = "GoneError"
    module.GoneError = GoneError  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        return pickle.dumps(GoneError("gone"))
    finally:
        del sys.modules[module.__name__]


async def test_success_returns_the_value() -> None:
    ok = result(api_pb2.RESULT_STATUS_SUCCESS, pickle.dumps({"answer": 42}))
    assert await decode_result(NO_CONNECTION, ok) == {"answer": 42}


async def test_success_that_cannot_be_unpickled_is_a_serialization_error() -> None:
    ok = result(api_pb2.RESULT_STATUS_SUCCESS, unpicklable_here())
    with pytest.raises(ember.SerializationError, match="could not be unpickled here"):
        await decode_result(NO_CONNECTION, ok)


async def test_failure_raises_the_remote_exception_with_its_traceback() -> None:
    failed = result(
        api_pb2.RESULT_STATUS_FAILURE,
        pickle.dumps(ValueError("bad x")),
        "ValueError: bad x",
        "Traceback (most recent call last):\n  line 3\nValueError: bad x\n",
    )
    with pytest.raises(ValueError, match="bad x") as caught:
        await decode_result(NO_CONNECTION, failed)
    [note] = caught.value.__notes__
    assert note.startswith("\nRemote traceback:\nTraceback (most recent call last):")


async def test_failure_whose_class_is_missing_here_is_a_remote_error_with_its_text() -> None:
    failed = result(
        api_pb2.RESULT_STATUS_FAILURE, unpicklable_here(), "GoneError: gone", "Traceback: ..."
    )
    with pytest.raises(ember.RemoteError) as caught:
        await decode_result(NO_CONNECTION, failed)
    assert str(caught.value) == "GoneError: gone"
    assert caught.value.remote_traceback == "Traceback: ..."
    assert caught.value.__notes__ == ["\nRemote traceback:\nTraceback: ..."]


async def test_failure_without_a_pickled_exception_is_a_remote_error() -> None:
    failed = result(api_pb2.RESULT_STATUS_FAILURE, text="Weird: thing")
    error = await decode_error(NO_CONNECTION, failed)
    assert isinstance(error, ember.RemoteError)
    assert str(error) == "Weird: thing"
    assert not hasattr(error, "__notes__")  # no traceback, no note


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (api_pb2.RESULT_STATUS_TIMEOUT, ember.FunctionTimeoutError),
        (api_pb2.RESULT_STATUS_OUT_OF_MEMORY, ember.OutOfMemoryError),
        (api_pb2.RESULT_STATUS_CANCELLED, ember.InputCancelledError),
        (api_pb2.RESULT_STATUS_INIT_FAILURE, ember.ExecutionError),
        (api_pb2.RESULT_STATUS_CONTAINER_DIED, ember.ExecutionError),
    ],
)
async def test_other_statuses_raise_their_error_kind_with_the_text(status: int, kind) -> None:
    with pytest.raises(kind, match=r"^what happened$"):
        await decode_result(NO_CONNECTION, result(status, text="what happened"))


async def test_an_error_without_text_still_says_the_input_failed() -> None:
    with pytest.raises(ember.ExecutionError, match="the input failed"):
        await decode_result(NO_CONNECTION, result(api_pb2.RESULT_STATUS_CONTAINER_DIED))


def test_is_error_is_false_only_for_success_and_generator_done() -> None:
    ok = {api_pb2.RESULT_STATUS_SUCCESS, api_pb2.RESULT_STATUS_GENERATOR_DONE}
    for status in api_pb2.ResultStatus.values():
        assert is_error(api_pb2.Result(status=status)) is (status not in ok)


def test_new_call_ids_are_what_the_control_plane_accepts() -> None:
    first, second = new_call_id(), new_call_id()
    assert first != second
    assert CALL_ID.match(first) and CALL_ID.match(second)
