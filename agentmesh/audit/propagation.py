"""W3C trace context in gRPC metadata, without touching OpenTelemetry's global propagator.

:func:`inject` writes ``traceparent`` (and ``tracestate``) into outgoing metadata, replacing any
already there; :func:`extract` reads them from incoming metadata. A missing, repeated or invalid
``traceparent`` yields an empty context, so the next span is a fresh root: never an error.

The common case (a single version-00 ``traceparent``, no ``tracestate``) is parsed and formatted
here directly, since it runs on every call; anything else goes through OpenTelemetry's
``TraceContextTextMapPropagator``, which is the reference for both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from agentmesh.audit.fastspan import FastSpan
from agentmesh.metadata import TRACE_HEADERS

__all__ = ["TRACE_HEADERS", "extract", "inject", "inject_span", "remote_parent"]

_PROPAGATOR = TraceContextTextMapPropagator()
_V00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ROOT = Context()


def inject(metadata: list[tuple[str, str]], context: Context | None = None) -> None:
    """Adds the trace context of ``context`` (default: the current one) to ``metadata`` in place.

    Nothing is added when the context holds no valid span.
    """
    inject_span(metadata, trace.get_current_span(context))


def inject_span(metadata: list[tuple[str, str]], span: trace.Span) -> None:
    """:func:`inject` for a context holding ``span`` (a client span: the server's span is its child), without
    building that context; an agentmesh span's ``traceparent`` is formatted from its ids directly (the
    client chain's hot path)."""
    if type(span) is FastSpan:  # always valid and sampled, no trace state
        _drop_trace_headers(metadata)
        metadata.append(("traceparent", f"00-{span.trace_id:032x}-{span.span_id:016x}-01"))
        return
    sc = span.get_span_context()
    if not sc.is_valid:
        return
    _drop_trace_headers(metadata)
    metadata.append(("traceparent", f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"))
    if sc.trace_state:
        metadata.append(("tracestate", sc.trace_state.to_header()))


def _drop_trace_headers(metadata: list[tuple[str, str]]) -> None:
    for key, _ in metadata:  # a plain loop: cheaper than any() over a generator, on every call
        if key.lower() in TRACE_HEADERS:
            metadata[:] = [(k, v) for k, v in metadata if k.lower() not in TRACE_HEADERS]
            return


def remote_parent(metadata: Sequence[tuple[str, str | bytes]] | None) -> SpanContext | None:
    """The caller's span carried by incoming ``metadata`` (a valid, remote SpanContext), or None for a
    new root: what :func:`extract` finds, without building a Context (the server span's hot path)."""
    parent: str | None = None
    for key, value in metadata or ():
        if key == "traceparent" and isinstance(value, str):
            if parent is not None:
                return None  # W3C: more than one traceparent is invalid
            parent = value
        elif key == "tracestate" or (not key.islower() and key.lower() in TRACE_HEADERS):
            return _span_context(extract(metadata))  # rare: the propagator's full parse
    if parent is None:
        return None
    m = _V00.fullmatch(parent)
    if m is None:
        return _span_context(extract(metadata))  # another version, or invalid: the propagator decides
    trace_id, span_id = int(m.group(1), 16), int(m.group(2), 16)
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(m.group(3), 16)))


def _span_context(context: Context) -> SpanContext | None:
    sc = trace.get_current_span(context).get_span_context()
    return sc if sc.is_valid else None


def extract(metadata: Sequence[tuple[str, str | bytes]] | None) -> Context:
    """The remote trace context carried by incoming ``metadata``, or an empty (root) context.

    The result never inherits the caller's current context: a server span started with it is a
    child of the remote span, or a new root.
    """
    carrier: dict[str, list[str]] = {}
    for key, value in metadata or ():
        if key in TRACE_HEADERS or (not key.islower() and key.lower() in TRACE_HEADERS):
            if isinstance(value, str):
                carrier.setdefault(key.lower(), []).append(value)
    parents = carrier.get("traceparent", ())
    if len(parents) != 1:
        return Context()  # absent, or ambiguous (W3C: more than one traceparent is invalid)
    if "tracestate" not in carrier:
        m = _V00.fullmatch(parents[0])
        if m is not None:
            trace_id, span_id = int(m.group(1), 16), int(m.group(2), 16)
            if trace_id and span_id:
                sc = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(m.group(3), 16)))
                return trace.set_span_in_context(NonRecordingSpan(sc), _ROOT)
    flat = {k: ",".join(v) for k, v in carrier.items()}  # repeated tracestate headers are joined
    return _PROPAGATOR.extract(flat, context=Context())
