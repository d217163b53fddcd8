"""Span exporters: console, JSONL file and OTLP; each redacts every span before it leaves.

One JSONL line per span (the input of ``agentmesh audit show``; a stable schema)::

    {"trace_id": "<32 hex>", "span_id": "<16 hex>", "parent_span_id": "<16 hex>" | null,
     "name": "/agentmesh.v1.Agent/Invoke", "kind": "server" | "client" | "internal",
     "start": <epoch seconds, float>, "end": <epoch seconds, float>, "duration_ms": <float>,
     "service": "<service.name: the agent>", "status": "OK" | "ERROR",
     "attributes": {...}, "events": [{"name": "...", "time": <epoch seconds>, "attributes": {...}}]}

Attributes and event attributes pass through :func:`agentmesh.audit.redact.safe_attributes`.
The file is opened ``O_APPEND`` (created ``0600``) and every batch of whole lines is written with
one ``os.write``, so several processes can append to the same log without interleaving lines.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from agentmesh.audit.redact import safe_attributes
from agentmesh.config import AuditConfig
from agentmesh.errors import ConfigError

__all__ = [
    "ConsoleExporter",
    "JsonlExporter",
    "RedactingExporter",
    "make_exporters",
    "span_record",
]

_KINDS = {SpanKind.SERVER: "server", SpanKind.CLIENT: "client"}


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """The JSONL record of one finished span (schema in the module docstring), redacted."""
    ctx = span.context
    parent = span.parent
    start = (span.start_time or 0) / 1e9
    end = (span.end_time or span.start_time or 0) / 1e9
    return {
        "trace_id": format(ctx.trace_id, "032x") if ctx else None,
        "span_id": format(ctx.span_id, "016x") if ctx else None,
        "parent_span_id": format(parent.span_id, "016x") if parent else None,
        "name": span.name,
        "kind": _KINDS.get(span.kind, "internal"),
        "start": start,
        "end": end,
        "duration_ms": round((end - start) * 1000, 3),
        "service": span.resource.attributes.get("service.name"),
        "status": "ERROR" if span.status.status_code is StatusCode.ERROR else "OK",
        "attributes": safe_attributes(span.attributes),
        "events": [
            {"name": e.name, "time": e.timestamp / 1e9, "attributes": safe_attributes(e.attributes)}
            for e in span.events
        ],
    }


def _line(span: ReadableSpan) -> bytes:
    text = json.dumps(span_record(span), separators=(",", ":"), ensure_ascii=False, default=str)
    return text.encode("utf-8") + b"\n"


class JsonlExporter(SpanExporter):
    """Appends one JSON line per span to ``path`` (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd: int | None = os.open(
                path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError as e:
            raise ConfigError(f"audit.jsonl_path: cannot open {path} for appending ({e.strerror})") from None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        fd = self._fd
        if fd is None:
            return SpanExportResult.FAILURE
        data = b"".join([_line(span) for span in spans])  # one write per batch of whole lines
        while data:  # a short write (disk full...) is finished, not lost
            data = data[os.write(fd, data):]
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True  # os.write leaves nothing buffered in this process


class ConsoleExporter(SpanExporter):
    """One compact JSON line per span on ``stream`` (default: the current ``sys.stderr``)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        stream = self._stream or sys.stderr
        stream.write("".join(_line(s).decode("utf-8") for s in spans))
        stream.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class RedactingExporter(SpanExporter):
    """Wraps an exporter that ships SDK spans as they are (OTLP) so it only sees redacted copies."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([_redacted(s) for s in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _redacted(span: ReadableSpan) -> ReadableSpan:
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=safe_attributes(span.attributes),
        events=[Event(e.name, safe_attributes(e.attributes), e.timestamp) for e in span.events],
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def make_exporters(cfg: AuditConfig, *, otlp_timeout: float = 5.0) -> list[SpanExporter]:
    """The exporters named by ``cfg.exporters`` ("none" adds nothing)."""
    out: list[SpanExporter] = []
    for name in dict.fromkeys(cfg.exporters):
        if name == "console":
            out.append(ConsoleExporter())
        elif name == "jsonl":
            if cfg.jsonl_path is None:
                raise ConfigError("audit.jsonl_path: required when the jsonl exporter is enabled")
            out.append(JsonlExporter(cfg.jsonl_path))
        elif name == "otlp":
            out.append(RedactingExporter(_otlp(cfg, otlp_timeout)))
        elif name != "none":
            raise ConfigError(f"audit.exporters: unknown exporter {name!r} (none, console, jsonl, otlp)")
    return out


def _otlp(cfg: AuditConfig, timeout: float) -> SpanExporter:
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
    return exporter
