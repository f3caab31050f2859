"""The harness protocol: status values that agree with api.proto, messages that round-trip, and
a decoder that refuses anything else (what a container sends is untrusted)."""

import pickle
import struct

import pytest

from ember.proto import api_pb2
from ember.proto import harness_frames as frames


def test_status_constants_equal_the_proto_result_statuses() -> None:
    constants = {"SUCCESS": frames.SUCCESS, "FAILURE": frames.FAILURE}
    constants["GENERATOR_DONE"] = frames.GENERATOR_DONE
    for name, value in constants.items():
        assert api_pb2.ResultStatus.Value(f"RESULT_STATUS_{name}") == value, name


def body_of(frame: bytes) -> bytes:
    (length,) = frames.HEADER.unpack(frame[: frames.HEADER.size])
    body = frame[frames.HEADER.size :]
    assert length == len(body)
    return body


@pytest.mark.parametrize(
    ("message", "accepted"),
    [
        (frames.Ready(), frames.FROM_HARNESS),
        (frames.InitFailure("ImportError: no module x", "Traceback ...\n"), frames.FROM_HARNESS),
        (frames.Result("in-abc-0", 3, frames.SUCCESS, b"\x00\x01", "", ""), frames.FROM_HARNESS),
        (
            frames.Result("in-abc-0", 0, frames.FAILURE, None, "ValueError: é", "tb"),
            frames.FROM_HARNESS,
        ),
        (frames.Input("in-abc-1", b"x" * 100_000), frames.TO_HARNESS),
        (frames.Load({"EMBER_MODULE": "app", "EMBER_QUALNAME": "f", "": "ü"}), frames.TO_HARNESS),
        (frames.Load({}), frames.TO_HARNESS),
    ],
)
def test_a_message_round_trips(message: frames.Message, accepted: tuple) -> None:
    assert frames.decode(body_of(frames.encode(message)), accepted) == message


def test_a_message_for_the_other_direction_is_refused() -> None:
    body = body_of(frames.encode(frames.Input("in-1", b"")))
    with pytest.raises(frames.FrameError, match="unexpected harness message type 4"):
        frames.decode(body, frames.FROM_HARNESS)


def test_a_pickle_is_not_a_frame() -> None:
    """What the old protocol sent (and what a forged frame would carry): never unpickled."""

    class Exploit:
        def __reduce__(self) -> tuple:
            return (exec, ("raise SystemExit('unpickled!')",))

    with pytest.raises(frames.FrameError):
        frames.decode(pickle.dumps(("result", Exploit())), frames.FROM_HARNESS)


def test_another_version_is_refused() -> None:
    body = bytearray(body_of(frames.encode(frames.Ready())))
    body[0] = frames.VERSION + 1
    with pytest.raises(frames.FrameError, match="protocol version 2"):
        frames.decode(bytes(body), frames.FROM_HARNESS)


@pytest.mark.parametrize("cut", [1, 2, 5, 10, 30])
def test_a_frame_cut_short_is_refused(cut: int) -> None:
    body = body_of(frames.encode(frames.Result("in-abc-0", 0, frames.SUCCESS, b"data", "", "")))
    with pytest.raises(frames.FrameError):
        frames.decode(body[:-cut], frames.FROM_HARNESS)


def test_bytes_after_the_last_field_are_refused() -> None:
    body = body_of(frames.encode(frames.Ready()))
    with pytest.raises(frames.FrameError, match="left over"):
        frames.decode(body + b"\x00", frames.FROM_HARNESS)


def test_a_string_that_is_not_utf8_is_refused() -> None:
    body = struct.pack(">BBI", frames.VERSION, frames.InitFailure.TAG, 2) + b"\xff\xfe"
    body += struct.pack(">I", 0)
    with pytest.raises(frames.FrameError, match="UTF-8"):
        frames.decode(body, frames.FROM_HARNESS)


def test_a_presence_flag_other_than_0_or_1_is_refused() -> None:
    good = body_of(frames.encode(frames.Result("i", 0, frames.FAILURE, None, "", "")))
    flag_at = 2 + 4 + 1 + 8 + 8  # version, type, the id, gen_index, status
    bad = good[:flag_at] + b"\x07" + good[flag_at + 1 :]
    with pytest.raises(frames.FrameError, match="presence flag"):
        frames.decode(bad, frames.FROM_HARNESS)


def test_a_length_over_the_limit_is_refused_before_the_body_is_read() -> None:
    with pytest.raises(frames.FrameError, match="over the"):
        frames.check_length(frames.MAX_FRAME_BYTES + 1)
    frames.check_length(frames.MAX_FRAME_BYTES)


def test_a_field_length_past_the_end_is_refused_without_reading_it() -> None:
    body = struct.pack(">BBI", frames.VERSION, frames.InitFailure.TAG, 0xFFFFFFF0)
    with pytest.raises(frames.FrameError, match="ends inside a field"):
        frames.decode(body, frames.FROM_HARNESS)
