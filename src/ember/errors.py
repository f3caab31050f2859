"""The one closed set of errors ember raises, and their wire codes.

    Error
     ├── InvalidError            a definition or argument the user can fix (bad option, bad value)
     │    └── SerializationError an argument or result that cannot be pickled or unpickled
     ├── NotFoundError           an app, function, call or blob that does not exist
     ├── AlreadyExistsError      a name that is taken
     ├── ExecutionError          user code could not run (import failed, container died)
     │    └── OutOfMemoryError   the container went past its `memory=` limit
     ├── RemoteError             a remote exception that cannot be rebuilt locally; carries its text
     ├── TimeoutError            waiting for a result took longer than the caller allowed
     │    └── FunctionTimeoutError  an input ran past the function's `timeout=`
     ├── InputCancelledError     the input was cancelled before it finished
     └── ConnectionError         the control plane cannot be reached

Each kind maps to one gRPC status code name in `GRPC_CODES`; the server translates an `Error` to
that code and the client translates it back, so `except ember.NotFoundError` works on both sides.
This module imports nothing from ember (every part may import it).
"""

from __future__ import annotations

import builtins


class Error(Exception):
    """Base of every error ember raises on purpose."""


class InvalidError(Error):
    """A definition or argument is not valid; the message says which and how to fix it."""


class SerializationError(InvalidError):
    """A value could not be pickled (on the way in) or unpickled (on the way out)."""


class NotFoundError(Error):
    """The named object does not exist."""


class AlreadyExistsError(Error):
    """The name is already taken."""


class ExecutionError(Error):
    """User code could not run to completion for a reason outside the code itself."""


class OutOfMemoryError(ExecutionError):
    """The container was killed for going past its memory limit."""


class RemoteError(Error):
    """A remote exception whose type cannot be rebuilt here; `str()` carries its text."""

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


class TimeoutError(Error, builtins.TimeoutError):
    """A result was not ready within the time the caller was willing to wait."""


class FunctionTimeoutError(TimeoutError):
    """An input ran longer than the function's `timeout`."""


class InputCancelledError(Error):
    """The input was cancelled before it finished."""


class ConnectionError(Error):
    """The control plane could not be reached."""


# Error kind -> gRPC status code name. The servers and the client use this table and nothing else.
GRPC_CODES: dict[type[Error], str] = {
    InvalidError: "INVALID_ARGUMENT",
    SerializationError: "INVALID_ARGUMENT",
    NotFoundError: "NOT_FOUND",
    AlreadyExistsError: "ALREADY_EXISTS",
    ExecutionError: "FAILED_PRECONDITION",
    OutOfMemoryError: "RESOURCE_EXHAUSTED",
    RemoteError: "UNKNOWN",
    TimeoutError: "DEADLINE_EXCEEDED",
    FunctionTimeoutError: "DEADLINE_EXCEEDED",
    InputCancelledError: "CANCELLED",
    ConnectionError: "UNAVAILABLE",
}

# Trailing metadata key on every status an ember servicer sets (its value: the error's kind). A
# status without it came from gRPC itself: a stopping server ends the calls it had not yet
# handed to a handler as CANCELLED (grpc/grpc#41785), which a client that cancelled nothing
# must read as the server going away, not as its call's cancellation.
GRPC_ERROR_KEY = "ember-error"

# The class rebuilt for a code: the most general kind that uses it (the table lists it first).
ERROR_FOR_CODE: dict[str, type[Error]] = {}
for _kind, _code in GRPC_CODES.items():
    ERROR_FOR_CODE.setdefault(_code, _kind)
