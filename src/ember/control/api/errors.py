"""ember errors to gRPC status codes, in one place for every servicer."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import grpc

from ember import errors


def status_code(error: errors.Error) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in errors.GRPC_CODES:
            return grpc.StatusCode[errors.GRPC_CODES[kind]]
    return grpc.StatusCode.UNKNOWN


def translate_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a servicer method (unary or streaming) so an ember error becomes its status code."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in method(self, request, context):
                    yield item
            except errors.Error as error:
                await abort(context, error)

        return stream

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except errors.Error as error:
            await abort(context, error)

    return unary


async def abort(context: grpc.aio.ServicerContext, error: errors.Error) -> None:
    """End the call with the error's status, marked as ember's own (`errors.GRPC_ERROR_KEY`)."""
    await context.abort(
        status_code(error),
        str(error),
        trailing_metadata=((errors.GRPC_ERROR_KEY, type(error).__name__),),
    )
