"""The light framing between a worker and the harness in each of its containers.

A frame is a 4-byte big-endian length, then a pickled tuple whose first item names the message:

    harness → worker   ("ready",)
                       ("init_failure", exception_text, traceback)
                       ("result", input_id, gen_index, status, data, exception_text, traceback)
    worker → harness   ("load", environment)   once, first: the function to load (EMBER_MODULE,
                                               EMBER_QUALNAME and others to add to os.environ)
                       ("input", input_id, pickled_args)

Only the standard library: the harness imports this at every cold start, and the container has
no protobuf. Status values are those of `ResultStatus` in api.proto (a test checks they agree).
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

HEADER = struct.Struct(">I")

SUCCESS = 1
FAILURE = 2
GENERATOR_DONE = 8


def encode(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> tuple[Any, ...]:
    try:
        message = pickle.loads(body)
    except Exception as error:
        raise ValueError(f"malformed harness frame: {error}") from None
    if not isinstance(message, tuple) or not message:
        raise ValueError("malformed harness frame")
    return message
