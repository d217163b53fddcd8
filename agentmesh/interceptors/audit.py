"""The outermost server stage: opens the call context and the audit span, and maps errors to status.

Every inner stage raises ``agentmesh.errors.MeshError``; this is the one boundary that records the
denial on the span and aborts the call with the status from ``interceptors/status.py``.

The status on the span is the one the client sees, whatever ended the call: the chain's refusal, the
handler's (``abort``/``set_code`` with a ``grpc.StatusCode`` or its integer value), an exception
(UNKNOWN), or the call ending under its handler: cancelled by its client (CANCELLED) or by its deadline
(DEADLINE_EXCEEDED). grpc.aio tells a handler neither apart (both cancel its task, or fail its next
write): the deadline is the one if it had passed by then, within :data:`DEADLINE_SLACK`. A status not
sent by the call's deadline (whatever the handler did) is DEADLINE_EXCEEDED for its client.

The span follows the OpenTelemetry conventions for gRPC server spans (see agentmesh/audit/spans.py):
named by ``rpc.method``, with ``rpc.response.status_code`` and ``error.type`` (the status name, unless
OK) and the peer's address. Its status is ERROR only for the statuses that mean the server failed
(:data:`~agentmesh.audit.spans.SERVER_ERROR_CODES`); a refusal (PERMISSION_DENIED, UNAUTHENTICATED,
RESOURCE_EXHAUSTED...) is the server doing its job: UNSET, recorded by ``agentmesh.decision`` and the
``agentmesh.denied`` event.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any, NamedTuple

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, StatusCode

from agentmesh.audit import AuditSink, record_denial, remote_parent, rpc_attributes
from agentmesh.audit import attributes as A
from agentmesh.audit.fastspan import FastSpan, FastTracer
from agentmesh.audit.spans import (
    REQUEST_ID_KEY,
    SERVER_ERROR_CODES,
    STATUS_ATTRIBUTES,
    peer_attributes,
    rpc_span_name,
    safe_request_id,
)
from agentmesh.context import CallContext
from agentmesh.errors import AuditUnavailable, DelegationError, MeshError
from agentmesh.interceptors.stage import Stage
from agentmesh.interceptors.status import status_of

__all__ = ["DEADLINE_SLACK", "AuditStage", "PayloadRecordStage"]

#: a call that ends under its handler this close to its deadline (seconds) ended by its deadline: the
#: client's deadline and the server's differ by the time the request took to arrive
DEADLINE_SLACK = 0.05
_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}
_MAX_PEERS = 4096  # remembered peer strings (one per client connection), parsed once each
#: per status: the span's end attributes, and whether the span is an ERROR (one lookup per call)
_ENDS = {code: (STATUS_ATTRIBUTES[code], code in SERVER_ERROR_CODES) for code in grpc.StatusCode}


class Opened(NamedTuple):
    """What :meth:`AuditStage.start` opened: the span, and the token that makes it current until
    :meth:`AuditStage.finish`."""

    span: FastSpan
    token: contextvars.Token[Context]
    started: float


class AuditStage:
    """The outermost step of the chain: opens a server span per call (child of the caller's
    ``traceparent``), records who called, the decision and the status, and maps mesh errors to gRPC
    status; with ``required``, refuses calls while the audit sink is down. Without a sink, spans are
    still made (for the trace context of the calls a handler makes) and dropped when they end."""

    def __init__(self, agent: str, sink: AuditSink | None, *, required: bool = False) -> None:
        self.agent = agent
        self.sink = sink
        self.required = required
        self._tracer = sink.tracer if sink is not None else FastTracer(agent)
        # span name and start attributes, per served method; those of a method not served (_OTHER)
        self._attributes: dict[str, tuple[str, dict[str, Any]]] = {}
        self._other = (rpc_span_name(None), {**rpc_attributes(None), A.AGENT: agent})
        self._peers: dict[str, dict[str, Any]] = {}  # context.peer() -> network.peer.* attributes

    def open(self, details: grpc.HandlerCallDetails) -> CallContext:
        return CallContext(method=details.method, agent=self.agent, metadata=details.invocation_metadata)

    def start(self, call: CallContext, context: grpc.aio.ServicerContext[Any, Any], registered: bool = True) -> Opened:
        """Starts the call's span and makes it the current span until :meth:`finish`."""
        started = time.perf_counter()
        named = self._attributes.get(call.method)
        if named is None:
            if registered:
                named = self._attributes[call.method] = (
                    rpc_span_name(call.method), {**rpc_attributes(call.method), A.AGENT: self.agent})
            else:  # an unregistered method's name is the caller's choice: neither kept nor recorded
                named = self._other
        span = self._tracer.start_child(named[0], remote_parent(call.metadata), SpanKind.SERVER, named[1])
        call.span = span
        remaining: float | None = context.time_remaining()  # grpc.aio: None without a deadline (stubs: float)
        if remaining is not None:
            call.deadline = time.monotonic() + remaining
        return Opened(span, otel_context.attach(trace.set_span_in_context(span)), started)

    def check_sink(self) -> None:
        if self.required and self.sink is not None and not self.sink.available():  # (the required exporters)
            raise AuditUnavailable(f"audit sink unavailable ({', '.join(self.sink.required or ('all',))}) "
                              "and audit.required is set")

    def finish(self, call: CallContext, opened: Opened, context: grpc.aio.ServicerContext[Any, Any], failed: bool,
               ended: grpc.StatusCode | None) -> None:
        otel_context.detach(opened.token)
        code = ended if ended is not None else self._code(context, call, failed)
        span = opened.span
        end, error = _ENDS[code]
        attrs: dict[str, Any] = {**end, **self._peer(context)}
        rid = call.metadata_value(REQUEST_ID_KEY)
        if rid is not None and safe_request_id(rid) is not None:
            attrs[A.REQUEST_ID] = rid
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
        if error:
            span.set_status(StatusCode.ERROR)
        span.end()
        if self.sink is not None:
            self.sink.metrics.record_server(call, code, time.perf_counter() - opened.started, span=span,
                                            registered=call.method in self._attributes)  # start() keeps served ones

    def _peer(self, context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, Any]:
        """``network.peer.address`` and ``.port`` of the call's connection (each peer string parsed once)."""
        peer = context.peer()
        found = self._peers.get(peer)
        if found is None:
            if len(self._peers) >= _MAX_PEERS:
                self._peers.clear()
            found = self._peers[peer] = peer_attributes(peer) if isinstance(peer, str) else {}
        return found

    async def fail(self, call: CallContext, err: MeshError, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        call.decision = err.decision or call.decision or "deny"  # a refusal by the chain is its own decision
        record_denial(call.span, err.stage, err.message)
        if isinstance(err, DelegationError):
            call.span.set_attribute(A.DELEGATION_CHECK, err.check)
        code, message, md = status_of(err)
        call.status = code
        await context.abort(code, message, trailing_metadata=md)

    @staticmethod
    def ended(call: CallContext) -> grpc.StatusCode:
        """The status a client sees of a call that ended under its handler: its deadline, or its cancel."""
        if call.deadline is not None and time.monotonic() >= call.deadline - DEADLINE_SLACK:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED

    @staticmethod
    def _code(context: grpc.aio.ServicerContext[Any, Any], call: CallContext, failed: bool) -> grpc.StatusCode:
        if call.status is not None:
            return call.status
        if call.deadline is not None and time.monotonic() >= call.deadline and not context.done():
            # a status not sent by the deadline reaches no one: the client's deadline (never later than
            # ours) has passed too, e.g. when the handler failed on a call it made, bound by that deadline
            return grpc.StatusCode.DEADLINE_EXCEEDED
        code = context.code()  # what the handler aborted with or set: a StatusCode, or its integer value
        if isinstance(code, grpc.StatusCode):
            return code
        if isinstance(code, int):
            return _BY_VALUE.get(code, grpc.StatusCode.UNKNOWN)
        return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


class PayloadRecordStage(Stage):
    """Records the allow-listed request fields (``audit.payload_fields``), redacted, on the call's span.
    Only in the chain when the allow-list is not empty: by default no payload content is recorded."""

    inspects_requests = True

    def __init__(self, sink: AuditSink) -> None:
        self.sink = sink

    def inspect(self, call: CallContext, request: Any) -> None:
        if call.span is not None:
            call.span.set_attributes(self.sink.payload_attributes(request))
