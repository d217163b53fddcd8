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

__all__ = ["CLIENT_STEPS", "ClientSteps", "Delegation", "TokenSource", "client_interceptors", "delegating"]

#: the order of the client chain, for docs and tests: each is one method of MeshClientInterceptor
CLIENT_STEPS = ("token", "delegation", "deadline", "client_span", "trace_context")


class TokenSource(Protocol):
    async def token(self) -> str: ...

    def cached(self) -> str | None:
        """The token if it is at hand and fresh, without waiting; else None."""
        ...


Prepared = tuple[list[tuple[str, str]], float | None, Span]


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


class ClientSteps:
    """The client chain's steps for calls from ``agent`` to ``target``, made once per channel.

    :meth:`prepare_now` does them synchronously when this member's token is at hand (the steady
    state), so a mesh channel runs them in the stub layer without grpc.aio's client-interceptor
    machinery; :meth:`prepare` awaits the token first. :func:`client_interceptors` wraps the same
    steps as grpc.aio interceptors, for channels made by hand.
    """

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

    def prepare_now(self, method: str, metadata: Any, timeout: float | None) -> Prepared | None:
        """(metadata, timeout, span) for a call, or None when the token must be fetched first."""
        if self.tokens is None:
            return self._build(method, metadata, timeout, None)
        token = self.tokens.cached()
        return None if token is None else self._build(method, metadata, timeout, token)

    async def prepare(self, method: str, metadata: Any, timeout: float | None) -> Prepared:
        token = await self.tokens.token() if self.tokens is not None else None
        return self._build(method, metadata, timeout, token)

    def _build(self, method: str, metadata: Any, timeout: float | None, token: str | None) -> Prepared:
        # identity headers come only from the steps below, never from the caller's metadata
        md = [(k, v) for k, v in (metadata or ()) if k not in IDENTITY_HEADERS and k not in TRACE_HEADERS]
        if token is not None:  # token
            md.append((AUTHORIZATION, "Bearer " + token))
        deleg = _outgoing_delegation()  # delegation
        if deleg is not None:
            md.append((SUBJECT_TOKEN, deleg.subject_token))
            if deleg.actors:
                md.append((ACTORS, ",".join(deleg.actors)))
        call = maybe_current_call()  # deadline: never outlive the call being served
        if call is not None and call.deadline is not None:
            left = max(0.0, call.deadline - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
        if timeout is None:
            timeout = self.default_timeout
        span = self.tracer.start_span(method, kind=SpanKind.CLIENT,  # client_span
                                      attributes=self._span_attributes(method))
        inject(md, trace.set_span_in_context(span))  # trace_context
        return md, timeout, span

    @staticmethod
    def end_when_done(call: Any, span: Span) -> None:
        """Ends the client span with the call's status once the call is over."""

        def done(c: Any) -> None:
            task = asyncio.ensure_future(_end_span(span, c))
            _ending.add(task)
            task.add_done_callback(_ending.discard)

        call.add_done_callback(done)

    @staticmethod
    def not_started(span: Span) -> None:
        span.set_status(Status(StatusCode.ERROR, "call not started"))
        span.end()

    async def _intercept(self, continuation: Callable[..., Awaitable[Any]],
                         details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        md, timeout, span = await self.prepare(method, details.metadata, details.timeout)
        new_details = grpc.aio.ClientCallDetails(details.method, timeout, md, details.credentials,
                                                 details.wait_for_ready)
        try:
            call = await continuation(new_details, request)
        except BaseException:
            self.not_started(span)
            raise
        self.end_when_done(call, span)  # the call is returned at once: its caller may cancel it
        return call


class _UnaryUnary(ClientSteps, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Callable[..., Awaitable[Any]],
                                    client_call_details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        return await self._intercept(continuation, client_call_details, request)


class _UnaryStream(ClientSteps, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Callable[..., Awaitable[Any]],
                                     client_call_details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        return await self._intercept(continuation, client_call_details, request)


class _StreamUnary(ClientSteps, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Callable[..., Awaitable[Any]],
                                     client_call_details: grpc.aio.ClientCallDetails, request_iterator: Any) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator)


class _StreamStream(ClientSteps, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
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
