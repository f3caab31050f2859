"""The wire side of calling a function: the shared connection, payloads, and decoding results.

Imported only when a call is made, never at `import ember`: inside a container the SDK is
imported without gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from ember import errors
from ember.client import Connection, connect, server_address
from ember.client.blobs import from_payload, to_payload
from ember.proto import api_pb2
from ember.sdk.serialization import deserialize, serialize

_connection: Connection | None = None
_connection_lock: asyncio.Lock | None = None


async def connection() -> Connection:
    """The process's one connection to the control plane (on the SDK's event loop)."""
    global _connection, _connection_lock
    if _connection is not None:  # the common case, on every call: no lock
        return _connection
    if _connection_lock is None:
        _connection_lock = asyncio.Lock()
    async with _connection_lock:
        if _connection is None:
            from ember.sdk.output import note_waiting

            # Starting the local cluster may take a while; keep the loop free meanwhile.
            _connection = connect(await asyncio.to_thread(server_address))
            _connection.on_waiting = note_waiting
        return _connection


def new_call_id() -> str:
    return "fc-" + uuid.uuid4().hex


async def encode_args(
    conn: Connection, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> api_pb2.Payload:
    return await to_payload(conn, serialize((args, kwargs)))


async def decode_result(conn: Connection, result: api_pb2.Result) -> Any:
    """The value a result carries, or raise the error it reports."""
    status = result.status
    if status == api_pb2.RESULT_STATUS_SUCCESS:
        data = await from_payload(conn, result.data)
        try:
            return deserialize(data)
        except Exception as error:
            raise errors.SerializationError(
                f"the function's return value could not be unpickled here: {error!r}"
            ) from None
    raise await decode_error(conn, result)


async def decode_error(conn: Connection, result: api_pb2.Result) -> BaseException:
    status = result.status
    text = result.exception_text
    if status == api_pb2.RESULT_STATUS_FAILURE:
        error: BaseException = errors.RemoteError(text, result.traceback)
        if result.data.WhichOneof("value"):
            # When its class does not exist here, the RemoteError carries its text instead.
            with contextlib.suppress(Exception):
                error = deserialize(await from_payload(conn, result.data))
        if result.traceback:
            error.add_note(f"\nRemote traceback:\n{result.traceback.rstrip()}")
        return error
    kinds: dict[int, type[errors.Error]] = {
        api_pb2.RESULT_STATUS_TIMEOUT: errors.FunctionTimeoutError,
        api_pb2.RESULT_STATUS_OUT_OF_MEMORY: errors.OutOfMemoryError,
        api_pb2.RESULT_STATUS_CANCELLED: errors.InputCancelledError,
    }
    kind = kinds.get(status, errors.ExecutionError)
    return kind(text or "the input failed")


def is_error(result: api_pb2.Result) -> bool:
    return result.status not in (
        api_pb2.RESULT_STATUS_SUCCESS,
        api_pb2.RESULT_STATUS_GENERATOR_DONE,
    )
