"""`ember.Retries`: how a failed input runs again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ember import errors
from ember.sdk.value import Value

if TYPE_CHECKING:
    from ember.proto import api_pb2


class Retries(Value):
    """Re-run a failed input up to `max_retries` times, waiting longer before each attempt.

    The n-th retry waits `initial_delay * backoff_coefficient ** (n - 1)` seconds, at most
    `max_delay`.

        @app.function(retries=ember.Retries(max_retries=3, backoff_coefficient=2.0))
    """

    __slots__ = ("backoff_coefficient", "initial_delay", "max_delay", "max_retries")

    def __init__(
        self,
        max_retries: int,
        backoff_coefficient: float = 2.0,
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
    ) -> None:
        if not 0 <= max_retries <= 10:
            raise errors.InvalidError(f"max_retries must be from 0 to 10, not {max_retries}")
        if not 1.0 <= backoff_coefficient <= 10.0:
            raise errors.InvalidError(
                f"backoff_coefficient must be from 1 to 10, not {backoff_coefficient}"
            )
        if not 0 <= initial_delay <= 60 or not 1 <= max_delay <= 60:
            raise errors.InvalidError(
                "initial_delay must be from 0 to 60 seconds and max_delay from 1 to 60 seconds"
            )
        self.max_retries = max_retries
        self.backoff_coefficient = backoff_coefficient
        self.initial_delay = initial_delay
        self.max_delay = max_delay

    @classmethod
    def of(cls, retries: int | Retries | None) -> Retries:
        """What `retries=` accepts: a count (with a fixed 1 s delay), a `Retries`, or None."""
        if retries is None:
            return cls(0)
        if isinstance(retries, Retries):
            return retries
        if isinstance(retries, int) and not isinstance(retries, bool):
            return cls(retries, backoff_coefficient=1.0, initial_delay=1.0)
        raise errors.InvalidError(
            f"retries must be an int or ember.Retries, not {type(retries).__name__}"
        )

    def to_proto(self) -> api_pb2.RetryPolicy:
        from ember.proto import api_pb2  # not at import: containers import the SDK without it

        return api_pb2.RetryPolicy(
            max_retries=self.max_retries,
            backoff_coefficient=self.backoff_coefficient,
            initial_delay_s=self.initial_delay,
            max_delay_s=self.max_delay,
        )
