"""Moving large payloads through the control plane's blob store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from ember.client.connection import Connection, error_from_rpc
from ember.proto import api_pb2

CHUNK_BYTES = 1 << 20
# Payloads above this travel as blobs, not inside a message.
INLINE_LIMIT = 2 << 20


async def upload(conn: Connection, data: bytes) -> str:
    async def chunks() -> AsyncIterator[api_pb2.BlobChunk]:
        for start in range(0, len(data), CHUNK_BYTES):
            yield api_pb2.BlobChunk(data=data[start : start + CHUNK_BYTES])
        if not data:
            yield api_pb2.BlobChunk(data=b"")

    try:
        response = await conn.ember.BlobPut(chunks())
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error) from None
    return response.blob_id


async def download(conn: Connection, blob_id: str) -> bytes:
    parts = []
    try:
        async for chunk in conn.ember.BlobGet(api_pb2.BlobGetRequest(blob_id=blob_id)):
            parts.append(chunk.data)
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error) from None
    return b"".join(parts)


async def to_payload(conn: Connection, data: bytes) -> api_pb2.Payload:
    if len(data) > INLINE_LIMIT:
        return api_pb2.Payload(blob_id=await upload(conn, data))
    return api_pb2.Payload(data=data)


async def from_payload(conn: Connection, payload: api_pb2.Payload) -> bytes:
    if payload.WhichOneof("value") == "blob_id":
        return await download(conn, payload.blob_id)
    return payload.data
