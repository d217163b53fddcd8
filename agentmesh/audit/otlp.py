"""OTLP export: spans become redacted OpenTelemetry SDK ``ReadableSpan`` s in the export thread.

The request thread never builds an SDK span (see fastspan.py); :class:`RedactingExporter` converts
each ended span, with every attribute, event attribute and status description redacted, and hands
the batch to the wrapped SDK exporter (``OTLPSpanExporter``).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Status, StatusCode

from agentmesh.audit.fastspan import FastSpan
from agentmesh.audit.redact import redact_text, safe_attributes
from agentmesh.config import AuditConfig
from agentmesh.errors import ConfigError

__all__ = ["RedactingExporter", "otlp_exporter", "readable_span"]

_SCOPE = InstrumentationScope("agentmesh")
_STATUS = {StatusCode.UNSET: Status(StatusCode.UNSET), StatusCode.OK: Status(StatusCode.OK)}
_NO_RESOURCE = Resource.get_empty()


def readable_span(span: FastSpan) -> ReadableSpan:
    """The SDK's read-only view of an ended span, redacted (what OTLP exporters accept)."""
    code = span.status_code
    if code is StatusCode.ERROR:
        description = span.status_description
        status = Status(code, redact_text(description) if description else None)
    else:
        status = _STATUS[code]
    resource = span.tracer.resource
    return ReadableSpan(
        name=span.name,
        context=span.get_span_context(),
        parent=span.parent,
        resource=resource if isinstance(resource, Resource) else _NO_RESOURCE,
        attributes=safe_attributes(span.attributes),
        events=[Event(name, safe_attributes(attrs), ts) for name, attrs, ts in span.events],
        links=span.links or (),
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=_SCOPE,
    )


class RedactingExporter:
    """Wraps an SDK exporter (OTLP) so it only ever sees redacted ``ReadableSpan`` copies."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[FastSpan]) -> SpanExportResult:
        return self.inner.export([readable_span(s) for s in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


def otlp_exporter(cfg: AuditConfig, timeout: float) -> RedactingExporter:
    """The OTLP/gRPC exporter to ``cfg.otlp_endpoint``, redacting.

    Raises ConfigError without an endpoint or without the ``agentmesh[otlp]`` extra.
    """
    if not cfg.otlp_endpoint:
        raise ConfigError("audit.otlp_endpoint: required when the otlp exporter is enabled")
    try:
        mod = importlib.import_module("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
    except ImportError:
        raise ConfigError(
            "audit.exporters: the otlp exporter needs opentelemetry-exporter-otlp-proto-grpc; "
            "install agentmesh[otlp]"
        ) from None
    # An http:// endpoint means plaintext; https:// or a bare host:port use TLS (the library's rule).
    exporter: SpanExporter = mod.OTLPSpanExporter(endpoint=cfg.otlp_endpoint, timeout=timeout)
    return RedactingExporter(exporter)
