"""The client chain: attach the caller's token (and the original principal's when delegating),
propagate W3C trace context and the deadline, and record a client span.

The steps run in the order of ``CLIENT_STEPS``, for all four call shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from agentmesh.audit import attributes as A
from agentmesh.audit import inject, rpc_attributes
from agentmesh.context import maybe_current_call
from agentmesh.metadata import ACTORS, AUTHORIZATION, IDENTITY_HEADERS, SUBJECT_TOKEN, TRACE_HEADERS

__all__ = ["CLIENT_STEPS", "Delegation", "TokenSource", "client_interceptors", "delegating"]

#: the order of the client chain, for docs and tests: each is one method of MeshClientInterceptor
CLIENT_STEPS = ("token", "delegation", "deadline", "client_span", "trace_context")


class TokenSource(Protocol):
    async def token(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Delegation:
    """Calls made inside :func:`delegating` act for ``subject_token``'s principal."""

    subject_token: str
    actors: tuple[str, ...] = ()


_delegation: contextvars.ContextVar[Delegation | None] = contextvars.ContextVar("agentmesh_delegation", default=None)


@contextlib.contextmanager
def delegating(subject_token: str, actors: tuple[str, ...] = ()) -> Iterator[None]:
    """Calls in this block are delegated for the principal of ``subject_token`` (the REST bridge
    uses this for external clients; agents serving a delegated call delegate onward by themselves)."""
    reset = _delegation.set(Delegation(subject_token, actors))
    try:
        yield
    finally:
        _delegation.reset(reset)


def _outgoing_delegation() -> Delegation | None:
    explicit = _delegation.get()
    if explicit is not None:
        return explicit
    call = maybe_current_call()
    if call is not None and call.raw_subject_token is not None:
        return Delegation(call.raw_subject_token, call.actors)
    return None


class _ClientSteps:
    """The client chain's steps; grpc.aio files an interceptor under one call shape only, so
    :func:`client_interceptors` makes one small subclass instance per shape sharing these steps."""

    def __init__(self, agent: str, target: str, tokens: TokenSource | None, tracer: trace.Tracer | None = None,
                 *, default_timeout: float | None = None) -> None:
        self.agent = agent
        self.target = target
        self.tokens = tokens
        self.tracer = tracer or trace.NoOpTracer()
        self.default_timeout = default_timeout
        self._attributes: dict[str, dict[str, Any]] = {}  # span start attributes, per method

    def _span_attributes(self, method: str) -> dict[str, Any]:
        attrs = self._attributes.get(method)
        if attrs is None:
            attrs = {**rpc_attributes(method), A.AGENT: self.agent, A.TARGET: self.target}
            if len(self._attributes) < 1024:
                self._attributes[method] = attrs
        return attrs

    async def _prepare(self, details: grpc.aio.ClientCallDetails) -> tuple[grpc.aio.ClientCallDetails, Span]:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        # identity headers come only from the steps below, never from the caller's metadata
        md = [(k, v) for k, v in (details.metadata or ()) if k not in IDENTITY_HEADERS and k not in TRACE_HEADERS]
        if self.tokens is not None:  # token
            md.append((AUTHORIZATION, "Bearer " + await self.tokens.token()))
        deleg = _outgoing_delegation()  # delegation
        if deleg is not None:
            md.append((SUBJECT_TOKEN, deleg.subject_token))
            if deleg.actors:
                md.append((ACTORS, ",".join(deleg.actors)))
        timeout = details.timeout  # deadline: never outlive the call being served
        call = maybe_current_call()
        if call is not None and call.deadline is not None:
            left = max(0.0, call.deadline - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
        if timeout is None:
            timeout = self.default_timeout
        span = self.tracer.start_span(method, kind=SpanKind.CLIENT,  # client_span
                                      attributes=self._span_attributes(method))
        inject(md, trace.set_span_in_context(span))  # trace_context
        return grpc.aio.ClientCallDetails(details.method, timeout, md, details.credentials,
                                          details.wait_for_ready), span

    async def _start(self, continuation: Callable[..., Awaitable[Any]],
                     details: grpc.aio.ClientCallDetails, request: Any) -> tuple[Any, Span]:
        new_details, span = await self._prepare(details)
        try:
            return await continuation(new_details, request), span
        except BaseException:
            span.set_status(Status(StatusCode.ERROR, "call not started"))
            span.end()
            raise

    async def _intercept(self, continuation: Callable[..., Awaitable[Any]],
                         details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        call, span = await self._start(continuation, details, request)

        def done(c: Any) -> None:
            task = asyncio.ensure_future(_end_span(span, c))
            _ending.add(task)
            task.add_done_callback(_ending.discard)

        call.add_done_callback(done)
        return call


class _UnaryUnary(_ClientSteps, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Callable[..., Awaitable[Any]],
                                    client_call_details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        # the call is returned at once (its caller may cancel it); the span ends when it is done
        return await self._intercept(continuation, client_call_details, request)


class _UnaryStream(_ClientSteps, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Callable[..., Awaitable[Any]],
                                     client_call_details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        return await self._intercept(continuation, client_call_details, request)


class _StreamUnary(_ClientSteps, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Callable[..., Awaitable[Any]],
                                     client_call_details: grpc.aio.ClientCallDetails, request_iterator: Any) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator)


class _StreamStream(_ClientSteps, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Callable[..., Awaitable[Any]],
                                      client_call_details: grpc.aio.ClientCallDetails, request_iterator: Any) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator)


def client_interceptors(agent: str, target: str, tokens: TokenSource | None, tracer: trace.Tracer | None = None,
                        *, default_timeout: float | None = None) -> list[grpc.aio.ClientInterceptor]:
    """The client chain for calls from ``agent`` to ``target``, one interceptor per call shape."""
    return [cls(agent, target, tokens, tracer, default_timeout=default_timeout)
            for cls in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


_ending: set[asyncio.Future[None]] = set()  # keeps span-ending tasks alive until they ran


async def _end_span(span: Span, call: Any) -> None:
    try:
        code = await call.code()
    except (asyncio.CancelledError, Exception):
        code = grpc.StatusCode.CANCELLED
    span.set_attribute(A.RPC_GRPC_STATUS_CODE, code.value[0])
    if code != grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()
