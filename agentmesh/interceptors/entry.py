"""The outermost server stage: opens the call context, and turns mesh errors into gRPC status.

Everything inside it raises ``agentmesh.errors.MeshError``; this stage is the one boundary that
aborts the call with the mapped status (see ``interceptors/status.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from agentmesh.context import CallContext, _set
from agentmesh.errors import MeshError
from agentmesh.interceptors.base import Behavior, Stage, call_stream, rewrap
from agentmesh.interceptors.status import status_of

__all__ = ["EntryStage"]


class EntryStage(Stage):
    def __init__(self, agent: str) -> None:
        super().__init__()
        self.agent = agent

    def wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return rewrap(handler, self._unary, self._stream)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        # The call context must exist before inner stages' intercept_service run (they share it).
        _set(CallContext(method=handler_call_details.method, agent=self.agent))
        return await super().intercept_service(continuation, handler_call_details)

    async def _unary(self, inner: Behavior, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await inner(request, context)
        except MeshError as e:
            code, message, md = status_of(e)
            await context.abort(code, message, trailing_metadata=md)

    async def _stream(self, inner: Behavior, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in call_stream(inner, request, context):
                yield item
        except MeshError as e:
            code, message, md = status_of(e)
            await context.abort(code, message, trailing_metadata=md)


