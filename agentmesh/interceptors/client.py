"""The client chain: attach the caller's own token, and when delegating the transaction token
(unchanged) with the hop links received plus this member's own link to the target; bound the deadline
by the call being served; record a client span and propagate W3C trace context.

:meth:`ClientSteps._build` does these steps in this order, for all four call shapes.

The client span follows the OpenTelemetry conventions for gRPC client spans (agentmesh/audit/spans.py):
named by ``rpc.method``, with ``server.address``/``server.port`` of the target as configured, and at its
end ``rpc.response.status_code``; every status but OK is an error (span status ERROR, ``error.type``).
A call made while serving one carries on that call's ``x-request-id`` (unless the handler set its own),
and its span the request id and the transaction id.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from agentmesh.audit import attributes as A
from agentmesh.audit import rpc_attributes
from agentmesh.audit.propagation import inject_span
from agentmesh.audit.spans import REQUEST_ID_KEY, STATUS_ATTRIBUTES, rpc_span_name, safe_request_id, server_address
from agentmesh.context import maybe_current_call
from agentmesh.errors import TokenError
from agentmesh.metadata import AUTHORIZATION, IDENTITY_HEADERS, TRACE_HEADERS, TXN_LINKS, TXN_TOKEN
from agentmesh.tokens.links import HopSigner

__all__ = ["ClientSteps", "Delegation", "TokenSource", "delegating"]


class TokenSource(Protocol):
    async def token(self) -> str: ...

    def cached(self) -> str | None:
        """The token if it is at hand and fresh, without waiting; else None."""
        ...


Prepared = tuple[list[tuple[str, str]], float | None, Span]


@dataclass(frozen=True, slots=True)
class Delegation:
    """Calls made inside :func:`delegating` act for ``txn_token``'s principal, continuing ``links``."""

    txn_token: str
    links: tuple[str, ...] = ()
    txn: str | None = None  # its transaction id, for the client span (None: not known here)


_delegation: contextvars.ContextVar[Delegation | None] = contextvars.ContextVar("agentmesh_delegation", default=None)


@contextlib.contextmanager
def delegating(txn_token: str, txn: str | None = None) -> Iterator[None]:
    """Calls in this block act for the principal of ``txn_token``, a transaction token this member
    obtained from the control plane (:meth:`agentmesh.runtime.node.MeshNode.exchange` at the edge, or
    :meth:`~agentmesh.runtime.node.MeshNode.narrow` for a narrower scope): this member is the first hop.
    Agents serving a delegated call delegate onward by themselves, appending their own link. ``txn``:
    the token's transaction id (its ``txn`` claim), recorded on the client spans."""
    reset = _delegation.set(Delegation(txn_token, txn=txn))
    try:
        yield
    finally:
        _delegation.reset(reset)


def _outgoing_delegation() -> Delegation | None:
    explicit = _delegation.get()
    if explicit is not None:
        return explicit
    call = maybe_current_call()
    if call is not None and call.txn_token is not None:
        return Delegation(call.txn_token, call.links, call.txn_id)
    return None


class ClientSteps:
    """The client chain's steps for calls from ``agent`` to ``target``, made once per channel.

    :meth:`prepare_now` does them synchronously when this member's token is at hand (the steady
    state), so a mesh channel runs them in the stub layer without grpc.aio's client-interceptor
    machinery; :meth:`prepare` awaits the token first.
    """

    def __init__(self, agent: str, target: str, tokens: TokenSource | None, tracer: trace.Tracer | None = None,
                 *, hops: HopSigner | None = None,
                 target_id: str = "", address: str = "") -> None:
        self.agent = agent
        self.target = target
        self.tokens = tokens
        self.hops = hops  # signs this member's hop links (None: this channel cannot delegate)
        self.target_id = target_id  # the target's SPIFFE ID: the audience of the links
        self.tracer = tracer or trace.NoOpTracer()
        # server.address/port: the gRPC target the channel dials, as configured ("" not known)
        self._server = server_address(address) if address else {}
        self._attributes: dict[str, tuple[str, dict[str, Any]]] = {}  # span name and start attributes, per method

    def _span_attributes(self, method: str) -> tuple[str, dict[str, Any]]:
        named = self._attributes.get(method)
        if named is None:
            named = (rpc_span_name(method),
                     {**rpc_attributes(method), **self._server, A.AGENT: self.agent, A.TARGET: self.target})
            if len(self._attributes) < 1024:
                self._attributes[method] = named
        return named

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
        deleg = _outgoing_delegation()  # delegation: the transaction token unchanged, the links extended
        if deleg is not None:
            if self.hops is None or not self.target_id:
                raise TokenError(f"{self.agent} cannot delegate to {self.target}: this channel signs no hop links")
            link = self.hops.link(deleg.txn_token, deleg.links, self.target_id)
            md.append((TXN_TOKEN, deleg.txn_token))
            md.append((TXN_LINKS, ",".join((*deleg.links, link))))
        call = maybe_current_call()
        rid = None
        if call is not None:
            if call.deadline is not None:  # deadline: never outlive the call being served (none: none, as in gRPC)
                left = max(0.0, call.deadline - time.monotonic())
                timeout = left if timeout is None else min(timeout, left)
            rid = _request_id(md, call.metadata_value(REQUEST_ID_KEY))  # request id: carried on
        elif metadata:
            rid = _request_id(md, None)
        name, attrs = self._span_attributes(method)  # client_span
        span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attrs)
        if rid is not None:
            span.set_attribute(A.REQUEST_ID, rid)
        if deleg is not None and deleg.txn is not None:
            span.set_attribute(A.TXN, deleg.txn)
        inject_span(md, span)  # trace_context
        return md, timeout, span

    @staticmethod
    def end_when_done(call: Any, span: Span) -> None:
        """Ends the client span with the call's status once the call is over: in the call's done
        callback, from the status grpc.aio already holds then (no task per call); a call that does not
        hold one there (not a grpc.aio call) is awaited for its status in a task."""

        def done(c: Any) -> None:
            code = _final_code(c)
            if code is not None:
                _end(span, code)
                return
            task = asyncio.ensure_future(_end_span(span, c))
            _ending.add(task)
            task.add_done_callback(_ending.discard)

        call.add_done_callback(done)

    @staticmethod
    def not_started(span: Span) -> None:
        span.set_attribute(A.ERROR_TYPE, A.ERROR_TYPE_OTHER)  # (no status: the call never started)
        span.set_status(Status(StatusCode.ERROR, "call not started"))
        span.end()


def _request_id(md: list[tuple[str, str]], served: str | None) -> str | None:
    """The request id of an outgoing call: the one in its metadata ``md`` if valid, else ``served`` (the
    call being served's), added to ``md``; None when neither is a valid one."""
    for key, value in md:
        if key == REQUEST_ID_KEY:
            return safe_request_id(value)
    if served is not None and safe_request_id(served) is not None:
        md.append((REQUEST_ID_KEY, served))
        return served
    return None


_BY_CYGRPC = {code.value[0]: code for code in grpc.StatusCode}  # cygrpc status codes are the integer values
_ending: set[asyncio.Future[None]] = set()  # keeps span-ending tasks alive until they ran


def _final_code(call: Any) -> grpc.StatusCode | None:
    """The status of a finished grpc.aio call, read where grpc.aio keeps it (its own ``_raise_for_status``
    reads it there too); None when it is not there."""
    status = getattr(getattr(call, "_cython_call", None), "_status", None)
    if status is None:
        return None
    try:
        return _BY_CYGRPC[status.code()]
    except (KeyError, AttributeError):
        return None


async def _end_span(span: Span, call: Any) -> None:
    try:
        code = await call.code()
    except (asyncio.CancelledError, Exception):
        code = grpc.StatusCode.CANCELLED
    _end(span, code)


def _end(span: Span, code: grpc.StatusCode) -> None:
    span.set_attributes(STATUS_ATTRIBUTES[code])  # rpc.response.status_code, and error.type unless OK
    if code is not grpc.StatusCode.OK:  # a client span: every status but OK is an error
        span.set_status(StatusCode.ERROR)
    span.end()
