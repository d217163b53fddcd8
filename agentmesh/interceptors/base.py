"""The machinery shared by every server stage: wrap a method handler once, for all four call shapes.

A stage is a ``grpc.aio.ServerInterceptor`` with two hooks:

* ``before(call, context)`` runs once per call before the handler (identity, token, policy, limit);
* ``inspect(call, request)`` runs on every request message (the payload guard).

The wrapped handler is built once per method and cached, so the per-call cost of a stage is one
dict lookup plus its own decision. Per-call findings live in the contextvar of ``agentmesh.context``.
"""

from __future__ import annotations

import inspect as _inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from agentmesh.context import CallContext, maybe_current_call

__all__ = ["Stage", "rewrap"]

Behavior = Callable[..., Any]


def _as_async_iter(result: Any) -> AsyncIterator[Any]:
    if hasattr(result, "__aiter__"):
        return result  # type: ignore[no-any-return]

    async def gen() -> AsyncIterator[Any]:
        for item in result:
            yield item

    return gen()


def rewrap(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Behavior, Any, grpc.aio.ServicerContext], Awaitable[Any]],
    stream: Callable[[Behavior, Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
) -> grpc.RpcMethodHandler:
    """A handler of the same shape whose behaviour goes through ``unary`` / ``stream``."""
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def uu(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await unary(inner, request, context)

        return grpc.unary_unary_rpc_method_handler(uu, handler.request_deserializer, handler.response_serializer)
    if handler.stream_unary is not None:
        inner = handler.stream_unary

        async def su(request_iter: Any, context: grpc.aio.ServicerContext) -> Any:
            return await unary(inner, request_iter, context)

        return grpc.stream_unary_rpc_method_handler(su, handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream is not None:
        inner = handler.unary_stream

        async def us(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for item in stream(inner, request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(us, handler.request_deserializer, handler.response_serializer)
    inner = handler.stream_stream

    async def ss(request_iter: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for item in stream(inner, request_iter, context):
            yield item

    return grpc.stream_stream_rpc_method_handler(ss, handler.request_deserializer, handler.response_serializer)


async def call_unary(inner: Behavior, request: Any, context: grpc.aio.ServicerContext) -> Any:
    return await inner(request, context)


async def call_stream(inner: Behavior, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    result = inner(request, context)
    if _inspect.isawaitable(result):  # a handler that writes with context.write() and returns None
        result = await result
        if result is None:
            return
    async for item in _as_async_iter(result):
        yield item


#: methods served without the chain (mutual TLS still applies): liveness must not need a token
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


class Stage(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A thin server interceptor around one sans-IO decision."""

    #: set by subclasses that look at request messages
    inspects_requests = False

    def __init__(self) -> None:
        self._wrapped: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def before(self, call: CallContext, context: grpc.aio.ServicerContext) -> None:
        """Per-call check; raise an ``agentmesh.errors.MeshError`` to refuse the call."""

    def inspect(self, call: CallContext, request: Any) -> None:
        """Per-message check; raise an ``agentmesh.errors.MeshError`` to refuse the call."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return handler
        hit = self._wrapped.get(id(handler))
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = self.wrap(handler)
        self._wrapped[id(handler)] = (handler, wrapped)
        return wrapped

    def wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        request_streaming = handler.stream_unary is not None or handler.stream_stream is not None
        return rewrap(handler, self._make_unary(request_streaming), self._make_stream(request_streaming))

    def _requests(self, call: CallContext, request: Any, streaming: bool) -> Any:
        if not self.inspects_requests:
            return request
        if not streaming:
            self.inspect(call, request)
            return request

        async def checked() -> AsyncIterator[Any]:
            async for message in _as_async_iter(request):
                self.inspect(call, message)
                yield message

        return checked()

    def _make_unary(self, streaming: bool) -> Callable[[Behavior, Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def run(inner: Behavior, request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = maybe_current_call()
            assert call is not None, "the chain must start with the call-context stage"
            await self.before(call, context)
            return await inner(self._requests(call, request, streaming), context)

        return run

    def _make_stream(
        self, streaming: bool
    ) -> Callable[[Behavior, Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        async def run(inner: Behavior, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = maybe_current_call()
            assert call is not None, "the chain must start with the call-context stage"
            await self.before(call, context)
            async for item in call_stream(inner, self._requests(call, request, streaming), context):
                yield item

        return run
