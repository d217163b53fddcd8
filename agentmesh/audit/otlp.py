"""OTLP export: spans become redacted OpenTelemetry SDK ``ReadableSpan`` s in the export thread.

The request thread never builds an SDK span (see fastspan.py); :class:`RedactingExporter` converts
each ended span, with every attribute, event attribute and status description redacted, and hands
the batch to the wrapped SDK exporter (``OTLPSpanExporter``).

The SDK exporter logs every failed export (and every retry) itself; those lines, when they come from
inside :meth:`RedactingExporter.export`, are kept out of the logs: the export queue reports the
exporter's trouble once and then in summaries (failurelog.py). The gRPC status of the last failure
is kept as :attr:`RedactingExporter.error`, for the line the queue logs.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Sequence

import grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Status, StatusCode

from agentmesh.audit.failurelog import safe_endpoint
from agentmesh.audit.fastspan import FastSpan
from agentmesh.audit.redact import redact_text, safe_attributes
from agentmesh.config import AuditConfig
from agentmesh.errors import ConfigError

__all__ = ["RedactingExporter", "otlp_exporter", "readable_span"]

_SCOPE = InstrumentationScope("agentmesh")
_STATUS = {StatusCode.UNSET: Status(StatusCode.UNSET), StatusCode.OK: Status(StatusCode.OK)}
_NO_RESOURCE = Resource.get_empty()
#: the logger of the SDK's OTLP/gRPC exporter (one line per failed export and per retry)
SDK_LOGGER = "opentelemetry.exporter.otlp.proto.grpc.exporter"
_exporting = threading.local()  # .current: the RedactingExporter exporting in this thread


class _QuietExport(logging.Filter):
    """Drops the SDK exporter's lines logged inside :meth:`RedactingExporter.export`, noting the gRPC
    status (a ``grpc.StatusCode`` among the line's arguments) as the exporter's :attr:`~RedactingExporter.error`."""

    def filter(self, record: logging.LogRecord) -> bool:
        exporter = getattr(_exporting, "current", None)
        if exporter is None:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, grpc.StatusCode):
                exporter.error = arg.name
        return False


_QUIET = _QuietExport()


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
    """Wraps an SDK exporter (OTLP) so it only ever sees redacted ``ReadableSpan`` copies; ``where``: the
    endpoint as logs may show it."""

    name = "otlp"

    def __init__(self, inner: SpanExporter, where: str = "otlp") -> None:
        self.inner = inner
        self.where = where
        self.error: str | None = None  # the gRPC status of the last refused export, if the SDK logged it
        logger = logging.getLogger(SDK_LOGGER)
        if _QUIET not in logger.filters:  # first: before the SDK's own filter, which hides repeated lines
            logger.filters.insert(0, _QUIET)

    def export(self, spans: Sequence[FastSpan]) -> SpanExportResult:
        self.error = None
        _exporting.current = self
        try:
            return self.inner.export([readable_span(s) for s in spans])
        finally:
            _exporting.current = None

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
    return RedactingExporter(exporter, safe_endpoint(cfg.otlp_endpoint))
