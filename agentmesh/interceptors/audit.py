"""The outermost server stage: opens the call context and the audit span, and maps errors to status.

Every inner stage raises ``agentmesh.errors.MeshError``; this is the one boundary that records the
denial on the span and aborts the call with the status from ``interceptors/status.py``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from agentmesh.audit import AuditSink, extract, record_denial, rpc_attributes
from agentmesh.audit import attributes as A
from agentmesh.context import CallContext
from agentmesh.errors import (
    DelegationError,
    MeshError,
    PayloadBlocked,
    PayloadTooLarge,
    PeerIdentityError,
    PermissionDenied,
    RateLimited,
    TokenError,
    Unavailable,
)
from agentmesh.interceptors.base import Body, Stage, StreamBody
from agentmesh.interceptors.status import status_of

__all__ = ["AuditStage", "PayloadRecordStage"]


def _stage_of(err: MeshError) -> A.DenialStage:
    if isinstance(err, PeerIdentityError):
        return "identity"
    if isinstance(err, DelegationError):
        return "delegation"
    if isinstance(err, TokenError):
        return "token"
    if isinstance(err, PayloadBlocked | PayloadTooLarge):
        return "guard"
    if isinstance(err, PermissionDenied):
        return "policy"
    if isinstance(err, RateLimited | Unavailable):
        return "ratelimit"
    return "policy"


class AuditStage:
    """The outermost step of the chain: opens a server span per call (child of the caller's
    ``traceparent``), records who called, the decision and the status, and maps mesh errors to gRPC
    status; with ``required``, refuses calls while the audit sink is down."""

    def __init__(self, agent: str, sink: AuditSink | None, *, required: bool = False) -> None:
        self.agent = agent
        self.sink = sink
        self.required = required
        self._tracer = sink.tracer if sink is not None else trace.NoOpTracer()
        self._attributes: dict[str, dict[str, Any]] = {}  # span start attributes, per method

    def open(self, details: grpc.HandlerCallDetails) -> CallContext:
        return CallContext(method=details.method, agent=self.agent, metadata=details.invocation_metadata)

    def _start(self, call: CallContext, context: grpc.aio.ServicerContext) -> Span:
        attrs = self._attributes.get(call.method)
        if attrs is None:
            attrs = self._attributes[call.method] = {**rpc_attributes(call.method), A.AGENT: self.agent}
        span = self._tracer.start_span(call.method, context=extract(call.metadata), kind=SpanKind.SERVER,
                                       attributes=attrs)
        call.span = span
        remaining = context.time_remaining()
        if remaining is not None:
            call.deadline = time.monotonic() + remaining
        return span

    def _check_sink(self) -> None:
        if self.required and self.sink is not None and not self.sink.available():
            raise Unavailable("audit sink unavailable and audit.required is set")

    def _finish(self, call: CallContext, span: Span, code: grpc.StatusCode, started: float) -> None:
        attrs: dict[str, Any] = {A.RPC_GRPC_STATUS_CODE: code.value[0]}
        if call.peer is not None:
            attrs[A.PEER_SPIFFE_ID] = call.peer.uri
        if call.principal is not None:
            attrs[A.ENDUSER_ID] = call.principal
            attrs[A.ROLES] = list(call.roles)
        if call.txn is not None:
            attrs[A.TXN] = call.txn.txn
            attrs[A.DELEGATION_CHAIN] = list(call.chain)
            if call.txn.scope:
                attrs[A.SCOPE] = list(call.txn.scope)
        if call.decision is not None:
            attrs[A.DECISION] = call.decision
        if call.rule is not None:
            attrs[A.RULE] = call.rule
        if call.ratelimit_remaining is not None:
            attrs[A.RATELIMIT_REMAINING] = call.ratelimit_remaining
        span.set_attributes(attrs)
        if code != grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))
        span.end()
        if self.sink is not None:
            self.sink.metrics.record_call(call.decision or "none", code.name, time.perf_counter() - started)

    async def _fail(self, call: CallContext, span: Span, err: MeshError, context: grpc.aio.ServicerContext) -> None:
        refused = PermissionDenied | PayloadTooLarge | RateLimited | TokenError | PeerIdentityError  # by the chain
        if call.decision is None or isinstance(err, refused):
            call.decision = "ratelimited" if isinstance(err, RateLimited) else "deny"
        record_denial(span, _stage_of(err), err.message)
        if isinstance(err, DelegationError):
            span.set_attribute(A.DELEGATION_CHECK, err.check)
        code, message, md = status_of(err)
        call.status = code
        await context.abort(code, message, trailing_metadata=md)

    @staticmethod
    def _code(context: grpc.aio.ServicerContext, call: CallContext, failed: bool) -> grpc.StatusCode:
        if call.status is not None:
            return call.status
        code = context.code()
        if isinstance(code, grpc.StatusCode):
            return code
        return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK

    async def unary(self, call: CallContext, context: grpc.aio.ServicerContext, body: Body) -> Any:
        started = time.perf_counter()
        span = self._start(call, context)
        failed = True
        try:
            with trace.use_span(span, end_on_exit=False):
                self._check_sink()
                result = await body()
            failed = False
            return result
        except MeshError as e:
            await self._fail(call, span, e, context)
        finally:
            self._finish(call, span, self._code(context, call, failed), started)

    async def stream(self, call: CallContext, context: grpc.aio.ServicerContext,
                     body: StreamBody) -> AsyncIterator[Any]:
        started = time.perf_counter()
        span = self._start(call, context)
        failed = True
        try:
            with trace.use_span(span, end_on_exit=False):
                self._check_sink()
                async for item in body():
                    yield item
            failed = False
        except MeshError as e:
            await self._fail(call, span, e, context)
        finally:
            self._finish(call, span, self._code(context, call, failed), started)


class PayloadRecordStage(Stage):
    """Records the allow-listed request fields (``audit.payload_fields``), redacted, on the call's span.
    Only in the chain when the allow-list is not empty: by default no payload content is recorded."""

    inspects_requests = True

    def __init__(self, sink: AuditSink) -> None:
        self.sink = sink

    def inspect(self, call: CallContext, request: Any) -> None:
        if call.span is not None:
            call.span.set_attributes(self.sink.payload_attributes(request))
