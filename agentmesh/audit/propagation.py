"""W3C trace context in gRPC metadata, without touching OpenTelemetry's global propagator.

:func:`inject` writes ``traceparent`` (and ``tracestate``) into outgoing metadata, replacing any
already there; :func:`extract` reads them from incoming metadata. A missing, repeated or invalid
``traceparent`` yields an empty context, so the next span is a fresh root: never an error.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["TRACE_HEADERS", "extract", "inject"]

_PROPAGATOR = TraceContextTextMapPropagator()
TRACE_HEADERS = frozenset(_PROPAGATOR.fields)  # {"traceparent", "tracestate"}


def inject(metadata: list[tuple[str, str]], context: Context | None = None) -> None:
    """Adds the trace context of ``context`` (default: the current one) to ``metadata`` in place.

    Nothing is added when the context holds no valid span.
    """
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    if not carrier:
        return
    metadata[:] = [(k, v) for k, v in metadata if k.lower() not in TRACE_HEADERS]
    metadata.extend(carrier.items())


def extract(metadata: Sequence[tuple[str, str | bytes]] | None) -> Context:
    """The remote trace context carried by incoming ``metadata``, or an empty (root) context.

    The result never inherits the caller's current context: a server span started with it is a
    child of the remote span, or a new root.
    """
    carrier: dict[str, list[str]] = {}
    for key, value in metadata or ():
        k = key.lower()
        if k in TRACE_HEADERS and isinstance(value, str):
            carrier.setdefault(k, []).append(value)
    if len(carrier.get("traceparent", ())) != 1:
        return Context()  # absent, or ambiguous (W3C: more than one traceparent is invalid)
    flat = {k: ",".join(v) for k, v in carrier.items()}  # repeated tracestate headers are joined
    return _PROPAGATOR.extract(flat, context=Context())
