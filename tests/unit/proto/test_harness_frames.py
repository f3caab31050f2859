"""The harness framing: status values that agree with api.proto, and frames that round-trip."""

import pickle

import pytest

from ember.proto import api_pb2, harness_frames


def test_status_constants_equal_the_proto_result_statuses() -> None:
    constants = {
        name: value
        for name, value in vars(harness_frames).items()
        if name.isupper() and isinstance(value, int)
    }
    assert constants  # the comparison below would pass vacuously otherwise
    for name, value in constants.items():
        assert api_pb2.ResultStatus.Value(f"RESULT_STATUS_{name}") == value, name


@pytest.mark.parametrize(
    "message",
    [
        ("ready",),
        ("init_failure", "ImportError: no module x", "Traceback ..."),
        ("result", "in-abc-0", 3, harness_frames.SUCCESS, b"\x00\x01", "", ""),
        ("input", "in-abc-1", b"x" * 100_000),
    ],
)
def test_a_frame_round_trips(message: tuple) -> None:
    frame = harness_frames.encode(message)
    (length,) = harness_frames.HEADER.unpack(frame[: harness_frames.HEADER.size])
    body = frame[harness_frames.HEADER.size :]
    assert length == len(body)
    assert harness_frames.decode(body) == message


@pytest.mark.parametrize("value", [(), ["ready"], "ready", None, {"ready": 1}])
def test_a_frame_that_is_not_a_non_empty_tuple_is_rejected(value: object) -> None:
    with pytest.raises(ValueError, match="malformed harness frame"):
        harness_frames.decode(pickle.dumps(value))
