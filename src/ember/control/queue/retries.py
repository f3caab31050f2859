"""When a failed input runs again: a pure function of its policy and attempt count."""

from __future__ import annotations

from ember.proto import api_pb2


def retry_delay(policy: api_pb2.RetryPolicy, attempts: int) -> float | None:
    """Seconds to wait before the next attempt, or None when the input has no retries left.

    `attempts` counts the runs made so far (1 after the first failure)."""
    if attempts > policy.max_retries:
        return None
    coefficient = policy.backoff_coefficient or 1.0
    delay = policy.initial_delay_s * coefficient ** (attempts - 1)
    return min(delay, policy.max_delay_s) if policy.max_delay_s > 0 else delay
