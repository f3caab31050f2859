"""The `Ember` service's images: build, list, describe, delete."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ember.control.api.errors import translate_errors
from ember.control.api.service import Context, PlaneService
from ember.proto import api_pb2


class ImagesApi(PlaneService):
    @translate_errors
    async def ImageBuild(
        self, request: api_pb2.ImageBuildRequest, context: Context
    ) -> AsyncIterator[api_pb2.ImageBuildEvent]:
        async for event in self._plane.images.build(list(request.steps)):
            yield event

    @translate_errors
    async def ImageList(
        self, request: api_pb2.ImageListRequest, context: Context
    ) -> api_pb2.ImageListResponse:
        return api_pb2.ImageListResponse(images=await self._plane.images.summaries())

    @translate_errors
    async def ImageGet(
        self, request: api_pb2.ImageGetRequest, context: Context
    ) -> api_pb2.ImageGetResponse:
        info, steps = await self._plane.images.describe(request.image_id)
        return api_pb2.ImageGetResponse(image=info, steps=steps)

    @translate_errors
    async def ImageDelete(
        self, request: api_pb2.ImageDeleteRequest, context: Context
    ) -> api_pb2.ImageDeleteResponse:
        removed = await self._plane.images.delete(
            request.image_id, self._plane.cluster.images_in_use()
        )
        return api_pb2.ImageDeleteResponse(chunks_removed=removed)
