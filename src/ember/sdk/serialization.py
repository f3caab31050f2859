"""Values on the wire: arguments, results and exceptions, pickled with cloudpickle.

Light on purpose: the harness imports this inside every container.
"""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle

from ember import errors


def serialize(value: Any) -> bytes:
    try:
        return cloudpickle.dumps(value)
    except Exception as error:
        raise errors.SerializationError(
            f"cannot send {type(value).__name__} to a container: it cannot be pickled ({error})"
        ) from None


def deserialize(data: bytes) -> Any:
    return pickle.loads(data)


def serialize_exception(error: BaseException) -> bytes | None:
    """The pickled exception, or None when it does not pickle (its text still travels)."""
    try:
        data = cloudpickle.dumps(error)
        pickle.loads(data)
    except Exception:
        return None
    return data
