"""The harness protocol: named, versioned, data-only messages between a worker and the harness
in each of its containers, over the container's unix socket.

The harness shares its process with the user's code, so everything a container sends is
untrusted: the worker reads it with this strict decoder, which builds only strings, bytes,
integers and string maps, never objects. Pickled arguments, results and exceptions travel as
opaque bytes that only the SDK and the harness unpickle.

A frame is a 4-byte big-endian length of its body, then the body:

    version   1 byte    VERSION; a frame of another version is refused
    type      1 byte    the message's TAG
    fields    in the order the message declares them:
                str            4-byte length, then UTF-8
                bytes          4-byte length, then the bytes
                bytes | None   1 byte (0 absent, 1 present), then bytes if present
                int            8-byte signed
                dict[str, str] 4-byte count, then each key and value as str

    worker → harness   Load, once, first; then Input, one at a time
    harness → worker   Ready or InitFailure; then one Result per input (a generator sends one
                       per item, then one with status GENERATOR_DONE)

Only the standard library: the harness imports this at every cold start, and the container has
no protobuf. Status values are those of `ResultStatus` in api.proto (a test checks they agree).
"""

import struct
from typing import Any, ClassVar

VERSION = 1
HEADER = struct.Struct(">I")
# The largest frame either side accepts: a result or argument larger than this cannot travel (a
# frame header is read before its body, so a bigger claim is refused before anything is held).
MAX_FRAME_BYTES = 1 << 30

SUCCESS = 1
FAILURE = 2
GENERATOR_DONE = 8

_PREFIX = struct.Struct(">BB")
_VERSION = _TAG = struct.Struct(">B")
_LENGTH = struct.Struct(">I")
_INT = struct.Struct(">q")
_FLAG = struct.Struct(">B")


class FrameError(ValueError):
    """A frame that is not a well-formed message of this protocol (or not one this side takes)."""


class Message:
    """A message: its fields are its class's annotations, in order, set from the constructor's
    arguments in that order. (Not a dataclass: the harness imports this module at every cold start,
    and `dataclasses` with the classes it makes cost more than the rest of the module.)"""

    TAG: ClassVar[int]
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls) -> None:
        # Its own annotations, not inherited ones (not inspect.get_annotations: inspect is slow
        # to import).
        cls.FIELDS = tuple(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063

    def __init__(self, *values: Any) -> None:
        if len(values) != len(self.FIELDS):
            raise TypeError(
                f"{type(self).__name__} takes {len(self.FIELDS)} values, not {len(values)}"
            )
        for name, value in zip(self.FIELDS, values, strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a {type(self).__name__} message is read-only")

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.FIELDS)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Message)
            and type(other) is type(self)
            and other.values() == self.values()
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.FIELDS)
        return f"{type(self).__name__}({fields})"


class Load(Message):
    """The function to load: variables to add to the environment first (EMBER_MODULE,
    EMBER_QUALNAME and others). A standby container waits for it as long as the worker keeps it."""

    TAG = 1
    environment: dict[str, str]


class Ready(Message):
    """The function's module is imported."""

    TAG = 2


class InitFailure(Message):
    """The import failed; the harness exits after sending it."""

    TAG = 3
    exception_text: str
    traceback: str


class Input(Message):
    """One input: the `(args, kwargs)` payload as the SDK pickled it."""

    TAG = 4
    input_id: str
    args: bytes


class Result(Message):
    """An input's outcome: SUCCESS with the pickled value, FAILURE with the pickled exception
    (None when it does not pickle) and its text and traceback, or GENERATOR_DONE."""

    TAG = 5
    input_id: str
    gen_index: int
    status: int
    data: bytes | None
    exception_text: str
    traceback: str


TO_HARNESS: tuple[type[Message], ...] = (Load, Input)
FROM_HARNESS: tuple[type[Message], ...] = (Ready, InitFailure, Result)


# ---- encoding


def _put_bytes(out: list[bytes], value: bytes) -> None:
    out.append(_LENGTH.pack(len(value)))
    out.append(value)


def _put_str(out: list[bytes], value: str) -> None:
    _put_bytes(out, value.encode())


def _put_int(out: list[bytes], value: int) -> None:
    out.append(_INT.pack(value))


def _put_optional_bytes(out: list[bytes], value: bytes | None) -> None:
    out.append(_FLAG.pack(value is not None))
    if value is not None:
        _put_bytes(out, value)


def _put_map(out: list[bytes], value: dict[str, str]) -> None:
    out.append(_LENGTH.pack(len(value)))
    for key, item in value.items():
        _put_str(out, key)
        _put_str(out, item)


def encode(message: Message) -> bytes:
    """The whole frame (header included) for `message`."""
    out = [_PREFIX.pack(VERSION, message.TAG)]
    for name, put, _ in _SCHEMAS[type(message)]:
        put(out, getattr(message, name))
    body = b"".join(out)
    if len(body) > MAX_FRAME_BYTES:
        raise FrameError(
            f"a {type(message).__name__} message of {len(body) >> 20} MiB is over the "
            f"{MAX_FRAME_BYTES >> 20} MiB a harness frame may hold"
        )
    return HEADER.pack(len(body)) + body


# ---- decoding


class _Reader:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.at = 0

    def take(self, size: int) -> bytes:
        end = self.at + size
        if end > len(self.body):
            raise FrameError("malformed harness frame: it ends inside a field")
        value = self.body[self.at : end]
        self.at = end
        return value

    def unpack(self, layout: struct.Struct) -> Any:
        at = self.at
        if at + layout.size > len(self.body):
            raise FrameError("malformed harness frame: it ends inside a field")
        self.at = at + layout.size
        return layout.unpack_from(self.body, at)[0]


def _get_bytes(reader: _Reader) -> bytes:
    return reader.take(reader.unpack(_LENGTH))


def _get_str(reader: _Reader) -> str:
    try:
        return _get_bytes(reader).decode()
    except UnicodeDecodeError:
        raise FrameError("malformed harness frame: a string is not UTF-8") from None


def _get_int(reader: _Reader) -> int:
    return int(reader.unpack(_INT))


def _get_optional_bytes(reader: _Reader) -> bytes | None:
    flag = reader.unpack(_FLAG)
    if flag not in (0, 1):
        raise FrameError("malformed harness frame: a presence flag is neither 0 nor 1")
    return _get_bytes(reader) if flag else None


def _get_map(reader: _Reader) -> dict[str, str]:
    count = reader.unpack(_LENGTH)
    return {_get_str(reader): _get_str(reader) for _ in range(count)}


_FIELD_CODECS: dict[Any, tuple[Any, Any]] = {
    str: (_put_str, _get_str),
    bytes: (_put_bytes, _get_bytes),
    int: (_put_int, _get_int),
    bytes | None: (_put_optional_bytes, _get_optional_bytes),
    dict[str, str]: (_put_map, _get_map),
}

# Each message's fields with their codecs, worked out once from its annotations: a frame is
# made and read per input, on both sides.
_SCHEMAS: dict[type[Message], tuple[tuple[str, Any, Any], ...]] = {
    kind: tuple((name, *_FIELD_CODECS[kind.__annotations__[name]]) for name in kind.FIELDS)
    for kind in (*TO_HARNESS, *FROM_HARNESS)
}


def check_length(length: int) -> None:
    """Refuse a frame header that claims more than a frame may hold, before reading the body."""
    if length > MAX_FRAME_BYTES:
        raise FrameError(
            f"a harness frame of {length >> 20} MiB is over the {MAX_FRAME_BYTES >> 20} MiB "
            "a frame may hold"
        )


def decode(body: bytes, accepted: tuple[type[Message], ...]) -> Message:
    """The message in a frame's `body`, which must be one of the `accepted` kinds; FrameError
    for anything else (another version, an unknown or unexpected kind, a field cut short, bytes
    left over)."""
    check_length(len(body))
    reader = _Reader(bytes(body))
    version, tag = reader.unpack(_VERSION), reader.unpack(_TAG)
    if version != VERSION:
        raise FrameError(f"harness frame of protocol version {version}; this side speaks {VERSION}")
    kind = next((known for known in accepted if tag == known.TAG), None)
    if kind is None:
        raise FrameError(f"unexpected harness message type {tag}")
    values = [get(reader) for _, _, get in _SCHEMAS[kind]]
    if reader.at != len(reader.body):
        raise FrameError("malformed harness frame: bytes left over after its last field")
    return kind(*values)
