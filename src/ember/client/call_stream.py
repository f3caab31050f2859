"""Function calls multiplexed on one `FunctionCalls` stream per connection.

A `.remote()` is one request and one response; on a stream they cost less than a unary call
each. Requests carry their call id, responses name it back, so any number of calls can be in
flight at once and answered in any order. When the stream breaks (the control plane restarts),
every call waiting on it fails with the stream's status and is sent again on a new stream by
`Connection.reconnecting`: the call id makes the repeat safe.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc

from ember.client.connection import error_from_code, stream_ended
from ember.proto import api_pb2

if TYPE_CHECKING:
    from ember.client.connection import Connection


class CallStream:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stream: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._answers: dict[str, asyncio.Future[api_pb2.FunctionCallResponse]] = {}
        self._writing = asyncio.Lock()  # a gRPC stream takes one write at a time

    async def call(self, request: api_pb2.FunctionCallRequest) -> api_pb2.FunctionCallResponse:
        """Send a `FunctionCall` request and wait for its answer."""
        response = await self._conn.reconnecting(lambda: self._call_once(request))
        if response.error_code:
            raise error_from_code(response.error_code, response.error_message)
        return response

    async def _call_once(
        self, request: api_pb2.FunctionCallRequest
    ) -> api_pb2.FunctionCallResponse:
        answer = asyncio.get_running_loop().create_future()
        self._answers[request.call_id] = answer
        try:
            stream = self._open()
            try:
                async with self._writing:
                    await stream.write(request)
            except asyncio.InvalidStateError:
                raise await stream_ended(stream) from None  # it ended before the write
            response = await answer
            if response.error_code == grpc.StatusCode.UNAVAILABLE.name:
                # Answered as unreachable (the control plane is stopping): `reconnecting`
                # sends it again, as it does a call the stream's end cut off.
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.aio.Metadata(),
                    grpc.aio.Metadata(),
                    details=response.error_message,
                )
            return response
        finally:
            self._answers.pop(request.call_id, None)

    def _open(self) -> Any:
        if self._stream is None or self._stream.done():
            self._stream = self._conn.ember.FunctionCalls()
            self._reader = asyncio.create_task(self._read(self._stream))
        return self._stream

    async def _read(self, stream: Any) -> None:
        """Hand each response to the call waiting for it; when the stream ends, fail them all."""
        try:
            async for response in stream:
                answer = self._answers.get(response.call_id)
                if answer is not None and not answer.done():
                    answer.set_result(response)
            failure = await stream_ended(stream)
        except grpc.aio.AioRpcError as error:
            failure = error
        for answer in self._answers.values():
            if not answer.done():
                answer.set_exception(failure)

    async def close(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
        if self._reader is not None:
            self._reader.cancel()
