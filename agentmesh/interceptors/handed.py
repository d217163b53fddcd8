"""The servicer context the server chain hands a handler when its stages look at messages.

A handler may read its requests with ``context.read()`` rather than its request iterator, and write its
responses with ``context.write()`` rather than yielding them: the chain hands it a context whose
``read()`` runs the inspecting stages and whose ``write()`` the reviewing ones, so both ways are checked
the same. Everything else is the call's own context, delegated method by method.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc

from agentmesh.context import CallContext

__all__ = ["CheckedContext", "Inspector", "Respond"]

Respond = Callable[[Any], Awaitable[Any]]


class Inspector(Protocol):
    def inspect(self, call: CallContext, request: Any) -> None: ...


class CheckedContext(grpc.aio.ServicerContext[Any, Any]):
    """The servicer context a handler is given when stages inspect its request stream or review its
    responses: ``read()`` runs the inspecting stages on each message and ``write()`` the reviewing ones
    on each response, so a handler that reads with ``context.read()`` rather than its request iterator,
    or writes with ``context.write()`` rather than yielding, is checked the same. Everything else is the
    call's own context."""

    __slots__ = ("_call", "_context", "_inspectors", "_respond")

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any], call: CallContext,
                 inspectors: tuple[Inspector, ...], respond: Respond | None) -> None:
        self._context, self._call, self._inspectors, self._respond = context, call, inspectors, respond

    async def read(self) -> Any:
        message = await self._context.read()
        if message is not grpc.aio.EOF:
            for stage in self._inspectors:
                stage.inspect(self._call, message)
        return message

    def __getattr__(self, name: str) -> Any:  # anything grpc.aio's context has beyond its base class
        return getattr(self._context, name)

    # grpc.aio.ServicerContext defines these as no-ops (so __getattr__ never sees them): each the call's own
    def add_done_callback(self, callback: Any) -> None:
        self._context.add_done_callback(callback)

    def cancelled(self) -> bool:
        return bool(self._context.cancelled())

    def done(self) -> bool:
        return bool(self._context.done())

    # grpc.aio's context returns None when the call has no deadline (its docstring says so); the stubs say float
    def time_remaining(self) -> float | None:  # type: ignore[override]
        remaining: float | None = self._context.time_remaining()
        return remaining

    def code(self) -> Any:
        return self._context.code()

    def details(self) -> Any:
        return self._context.details()

    def trailing_metadata(self) -> Any:
        return self._context.trailing_metadata()

    async def write(self, message: Any) -> None:
        await self._context.write(message if self._respond is None else await self._respond(message))

    # the other abstract methods of grpc.aio.ServicerContext, each the call's own
    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        await self._context.send_initial_metadata(initial_metadata)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> Any:
        return await self._context.abort(code, details, trailing_metadata)

    async def abort_with_status(self, status: Any) -> Any:
        return await self._context.abort_with_status(status)

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._context.set_trailing_metadata(trailing_metadata)

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        self._context.set_details(details)

    def set_compression(self, compression: Any) -> None:
        self._context.set_compression(compression)

    def disable_next_message_compression(self) -> None:
        self._context.disable_next_message_compression()

    def peer(self) -> str:
        return str(self._context.peer())

    def peer_identities(self) -> Any:
        return self._context.peer_identities()

    def peer_identity_key(self) -> Any:
        return self._context.peer_identity_key()

    def auth_context(self) -> Any:
        return self._context.auth_context()
