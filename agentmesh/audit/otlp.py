"""OTLP export: spans become redacted OpenTelemetry SDK ``ReadableSpan`` s in the export thread.

The request thread never builds an SDK span (see fastspan.py); :class:`RedactingExporter` converts
each ended span, with every attribute, event attribute and status description redacted, and hands
the batch to the wrapped SDK exporter (``OTLPSpanExporter``).

The SDK exporter logs every failed export (and every retry) itself, with its endpoint and the gRPC
library's error details; those lines, when they come from inside :func:`quiet_sdk_logs` (around
:meth:`RedactingExporter.export`, and around each OTLP metrics push: otlpmetrics.py), are kept out of
the logs: the caller reports the exporter's trouble once and then in summaries (failurelog.py), with
the endpoint as :func:`~agentmesh.config.safe_endpoint` shows it. The gRPC status of the last failure
is kept as the caller's ``error`` (:attr:`RedactingExporter.error`), for the line it logs.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Protocol

import grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Status, StatusCode

from agentmesh.audit.fastspan import FastSpan
from agentmesh.audit.redact import redact_text, safe_attributes
from agentmesh.config import AuditConfig, safe_endpoint
from agentmesh.errors import ConfigError

__all__ = ["RedactingExporter", "otlp_exporter", "quiet_sdk_logs", "readable_span"]

_SCOPE = InstrumentationScope("agentmesh")
_STATUS = {StatusCode.UNSET: Status(StatusCode.UNSET), StatusCode.OK: Status(StatusCode.OK)}
_NO_RESOURCE = Resource.get_empty()
#: the logger of the SDK's OTLP/gRPC exporter (one line per failed export and per retry)
SDK_LOGGER = "opentelemetry.exporter.otlp.proto.grpc.exporter"
_exporting = threading.local()  # .current: what is exporting in this thread, inside quiet_sdk_logs


class _HasError(Protocol):
    """What :func:`quiet_sdk_logs` notes the gRPC status of a failed export on."""

    error: str | None


class _QuietExport(logging.Filter):
    """Drops the SDK exporter's lines logged inside :func:`quiet_sdk_logs`, noting the gRPC status (a
    ``grpc.StatusCode`` among the line's arguments) as the ``error`` of what is exporting."""

    def filter(self, record: logging.LogRecord) -> bool:
        exporting: _HasError | None = getattr(_exporting, "current", None)
        if exporting is None:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, grpc.StatusCode):
                exporting.error = arg.name
        return False


_QUIET = _QuietExport()


@contextlib.contextmanager
def quiet_sdk_logs(exporting: _HasError) -> Iterator[None]:
    """Within it, in this thread, the OTLP/gRPC SDK exporter's own log lines (one per failed attempt, with
    the endpoint and the error details) are dropped; the gRPC status they name becomes ``exporting.error``."""
    logger = logging.getLogger(SDK_LOGGER)
    if _QUIET not in logger.filters:  # first: before the SDK's own filter, which hides repeated lines
        logger.filters.insert(0, _QUIET)
    _exporting.current = exporting
    try:
        yield
    finally:
        _exporting.current = None


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

    def export(self, spans: Sequence[FastSpan]) -> SpanExportResult:
        self.error = None
        with quiet_sdk_logs(self):
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
    return RedactingExporter(exporter, safe_endpoint(cfg.otlp_endpoint))
