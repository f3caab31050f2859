"""The `Ember` service's blobs: large payloads up and down, in chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ember.control.api.errors import translate_errors
from ember.control.api.service import Context, PlaneService
from ember.proto import api_pb2


async def blob_chunks(requests: AsyncIterator[api_pb2.BlobChunk]) -> AsyncIterator[bytes]:
    async for chunk in requests:
        yield chunk.data


class BlobsApi(PlaneService):
    @translate_errors
    async def BlobPut(
        self, request_iterator: AsyncIterator[api_pb2.BlobChunk], context: Context
    ) -> api_pb2.BlobPutResponse:
        blob_id = await self._plane.blobs.put(blob_chunks(request_iterator))
        return api_pb2.BlobPutResponse(blob_id=blob_id)

    @translate_errors
    async def BlobGet(
        self, request: api_pb2.BlobGetRequest, context: Context
    ) -> AsyncIterator[api_pb2.BlobChunk]:
        async for chunk in self._plane.blobs.get(request.blob_id):
            yield api_pb2.BlobChunk(data=chunk)
