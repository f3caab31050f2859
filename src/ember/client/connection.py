"""A connection to the control plane: one gRPC channel, error mapping, and retries.

Every unary call goes through `Connection.call`, which turns a gRPC status into the matching
`ember.errors` kind (the reverse of the server's mapping) and retries while the control plane is
unreachable, for up to `RECONNECT_S`: a control plane that restarts mid-map is waited for, and
every request the SDK sends is safe to repeat (call ids are made here, inputs are keyed by
position, outputs are read after a sequence number).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from ember import errors
from ember.proto import api_pb2_grpc

if TYPE_CHECKING:
    from ember.client.call_stream import CallStream

log = logging.getLogger(__name__)

RECONNECT_S = 120.0
# While the control plane stays unreachable this long, `revive` is called (again every
# REVIVE_EVERY_S): the local cluster's supervisor may be what died.
REVIVE_AFTER_S = 3.0
REVIVE_EVERY_S = 10.0
MAX_MESSAGE_BYTES = 256 << 20
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

Response = TypeVar("Response")


def error_from_code(code_name: str, details: str) -> errors.Error:
    """The ember error a gRPC status code name stands for (the reverse of the server's map)."""
    return errors.ERROR_FOR_CODE.get(code_name, errors.Error)(details or code_name)


def error_from_rpc(error: grpc.aio.AioRpcError) -> errors.Error:
    code = error.code()
    name = "UNAVAILABLE" if is_unreachable(error) else code.name if code else ""
    return error_from_code(name, error.details() or "")


def is_unreachable(error: grpc.aio.AioRpcError) -> bool:
    """Whether the call failed for want of a control plane: UNAVAILABLE, or a CANCELLED that no
    ember servicer set (gRPC's own, from a server that stopped under the call; see
    `errors.GRPC_ERROR_KEY`). This client never cancels a call in a way that reads as one."""
    code = error.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return True
    trailers = error.trailing_metadata() or ()
    return code == grpc.StatusCode.CANCELLED and all(
        key != errors.GRPC_ERROR_KEY for key, _value in trailers
    )


async def stream_ended(stream: Any) -> grpc.aio.AioRpcError:
    """The error to raise for a stream that ended under its user: its own status, or UNAVAILABLE
    when it ended cleanly (the control plane went away), so that `reconnecting` tries again."""
    code = await stream.code()
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE if code == grpc.StatusCode.OK else code,
        grpc.aio.Metadata(),
        await stream.trailing_metadata() or grpc.aio.Metadata(),
        details=await stream.details() or "the stream ended",
    )


class Connection:
    def __init__(self, url: str) -> None:
        self.url = url
        self.channel = grpc.aio.insecure_channel(url, options=CHANNEL_OPTIONS)
        self.ember = api_pb2_grpc.EmberStub(self.channel)
        self.workers = api_pb2_grpc.WorkersStub(self.channel)
        self._calls: CallStream | None = None
        # Told, with a reason in words, when a request waits for the control plane to answer
        # again (the SDK shows it to the caller).
        self.on_waiting: Callable[[str], None] = lambda _reason: None
        # Called (in a thread) while the control plane stays unreachable: starts the local
        # cluster again if it is gone (`ember.client.connect`); None for a configured server.
        self.revive: Callable[[], object] | None = None
        self._revived_at = float("-inf")

    @property
    def calls(self) -> CallStream:
        """The connection's stream of function calls (made on first use, in the running loop)."""
        from ember.client.call_stream import CallStream

        if self._calls is None:
            self._calls = CallStream(self)
        return self._calls

    async def call(
        self, method: Any, request: Any, *, timeout: float | None = None, retry: bool = True
    ) -> Any:
        """`await conn.call(conn.ember.AppCreate, request)`, mapped errors, reconnecting."""
        return await self.reconnecting(lambda: method(request, timeout=timeout), retry=retry)

    async def reconnecting(
        self, attempt: Callable[[], Awaitable[Response]], *, retry: bool = True
    ) -> Response:
        """Await `attempt()`, again while the control plane is unreachable (the attempt must be
        safe to repeat); a gRPC error becomes the matching ember error."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        give_up_at = began + RECONNECT_S
        delay = 0.05
        while True:
            try:
                return await attempt()
            except grpc.aio.AioRpcError as error:
                unavailable = is_unreachable(error)
                if not (retry and unavailable) or loop.time() > give_up_at:
                    if unavailable:
                        raise errors.ConnectionError(
                            f"cannot reach the ember control plane at {self.url}: {error.details()}"
                        ) from None
                    raise error_from_rpc(error) from None
            log.debug("control plane unavailable; retrying in %.2fs", delay)
            self.on_waiting(f"cannot reach the ember control plane at {self.url}; trying again")
            await self._revive_if_long(loop.time() - began)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _revive_if_long(self, unreachable_s: float) -> None:
        now = asyncio.get_running_loop().time()
        if self.revive is None or unreachable_s < REVIVE_AFTER_S:
            return
        if now - self._revived_at < REVIVE_EVERY_S:
            return
        self._revived_at = now
        try:
            await asyncio.to_thread(self.revive)
        except Exception as error:  # the requests go on failing, and say why
            log.warning("could not start the local cluster again: %s", error)

    async def close(self) -> None:
        if self._calls is not None:
            await self._calls.close()
        await self.channel.close()
