"""What a worker accepts from a container as the result of the input it runs: only that input's
result, numbered in order, with a status a harness sends (the container is untrusted)."""

import re

import pytest

from ember.proto import harness_frames as frames
from ember.worker.container_task import _wrong_result


def result(
    input_id: str = "in-a-0",
    gen_index: int = 0,
    status: int = frames.SUCCESS,
    data: bytes | None = b"v",
) -> frames.Result:
    return frames.Result(input_id, gen_index, status, data, "", "")


@pytest.mark.parametrize(
    ("message", "generator"),
    [
        (result(), False),
        (result(status=frames.FAILURE, data=None), False),
        (result(status=frames.FAILURE, data=b"pickled exception"), False),
        (result(gen_index=2), True),
        (result(gen_index=2, status=frames.GENERATOR_DONE, data=None), True),
    ],
)
def test_the_running_inputs_result_is_accepted(message: frames.Result, generator: bool) -> None:
    expected = 2 if generator else 0
    assert _wrong_result(message, "in-a-0", expected, generator) == ""


@pytest.mark.parametrize(
    ("message", "generator", "complaint"),
    [
        (frames.Ready(), False, "a Ready message while it ran an input"),
        (frames.InitFailure("x", ""), False, "an? InitFailure message"),
        (result(input_id="in-other-0"), False, "input 'in-other-0', which it was not running"),
        (result(status=frames.GENERATOR_DONE, data=None), False, "status 8"),
        (result(status=4), False, "status 4"),  # CONTAINER_DIED is the worker's to say
        (result(gen_index=1), False, "numbered 1 where 0 was due"),
        (result(gen_index=5), True, "numbered 5 where 0 was due"),
        (result(data=None), False, "without a value"),
        (result(status=frames.GENERATOR_DONE, data=b"x"), True, "carries a value"),
    ],
)
def test_anything_else_is_refused(message: frames.Message, generator: bool, complaint: str) -> None:
    assert re.search(complaint, _wrong_result(message, "in-a-0", 0, generator))
