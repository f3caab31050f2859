"""`retry_delay`: when a failed input runs again."""

import pytest

from ember.control.queue.retries import retry_delay
from ember.proto import api_pb2


def policy(max_retries: int, coefficient: float, initial: float, maximum: float):
    return api_pb2.RetryPolicy(
        max_retries=max_retries,
        backoff_coefficient=coefficient,
        initial_delay_s=initial,
        max_delay_s=maximum,
    )


@pytest.mark.parametrize(
    ("retry_policy", "attempts", "expected"),
    [
        (api_pb2.RetryPolicy(), 1, None),  # no retries by default
        (policy(3, 2.0, 1.0, 60.0), 1, 1.0),
        (policy(3, 2.0, 1.0, 60.0), 2, 2.0),
        (policy(3, 2.0, 1.0, 60.0), 3, 4.0),
        (policy(3, 2.0, 1.0, 60.0), 4, None),  # the fourth run was the third retry
        (policy(10, 3.0, 5.0, 60.0), 4, 60.0),  # 135 s capped at max_delay
        (policy(10, 3.0, 5.0, 0.0), 4, 135.0),  # no cap when max_delay is unset
        (policy(2, 0.0, 1.5, 60.0), 2, 1.5),  # an unset coefficient is a fixed delay
        (policy(2, 1.0, 0.0, 60.0), 1, 0.0),  # retry at once
    ],
)
def test_retry_delay(retry_policy, attempts: int, expected: float | None) -> None:
    assert retry_delay(retry_policy, attempts) == expected
