"""Span exporters: console, JSONL file and OTLP (otlp.py); each redacts every span before it leaves.

One JSONL line per span (the input of ``agentmesh audit show``; a stable schema)::

    {"trace_id": "<32 hex>", "span_id": "<16 hex>", "parent_span_id": "<16 hex>" | null,
     "name": "/agentmesh.v1.Agent/Invoke", "kind": "server" | "client" | "internal",
     "start": <epoch seconds, float>, "end": <epoch seconds, float>, "duration_ms": <float>,
     "service": "<service.name: the agent>", "status": "OK" | "ERROR",
     "attributes": {...}, "events": [{"name": "...", "time": <epoch seconds>, "attributes": {...}}]}

Attributes and event attributes pass through :func:`agentmesh.audit.redact.safe_attributes`. The
exporters read the ended spans of fastspan.py directly, in the queue's export thread.
The file is opened ``O_APPEND`` (created ``0600``, or tightened to it) and every batch of whole lines is written with
one ``os.write``, so several processes can append to the same log without interleaving lines.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import StatusCode

from agentmesh.audit.fastspan import FastSpan
from agentmesh.audit.jsonline import KINDS, span_line
from agentmesh.audit.otlp import RedactingExporter, otlp_exporter
from agentmesh.audit.processor import SpanRecordExporter
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

_ERROR = StatusCode.ERROR


def span_record(span: FastSpan) -> dict[str, Any]:
    """The JSONL record of one ended span (schema in the module docstring), redacted."""
    parent = span.parent
    start = span.start_time / 1e9
    end = (span.end_time or span.start_time) / 1e9
    return {
        "trace_id": f"{span.trace_id:032x}",
        "span_id": f"{span.span_id:016x}",
        "parent_span_id": f"{parent.span_id:016x}" if parent is not None else None,
        "name": span.name,
        "kind": KINDS.get(span.kind, "internal"),
        "start": start,
        "end": end,
        "duration_ms": round((end - start) * 1000, 3),
        "service": span.tracer.service_name,
        "status": "ERROR" if span.status_code is _ERROR else "OK",
        "attributes": safe_attributes(span.attributes),
        "events": [
            {"name": name, "time": ts / 1e9, "attributes": safe_attributes(attrs)}
            for name, attrs, ts in span.events
        ],
    }


def _lines(spans: Sequence[FastSpan]) -> str:
    return "".join([span_line(span) for span in spans])  # span_line: span_record's JSON, faster


class JsonlExporter:
    """Appends one JSON line per span to ``path`` (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise ConfigError(f"audit.jsonl_path: cannot open {path} for appending ({e.strerror})") from None
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):  # (not a device such as /dev/stdout)
                os.fchmod(fd, 0o600)  # also tightens a log that existed with wider permissions
        except OSError as e:
            os.close(fd)
            raise ConfigError(f"audit.jsonl_path: cannot make {path} private (mode 0600: {e.strerror})") from None
        self._fd: int | None = fd

    def export(self, spans: Sequence[FastSpan]) -> SpanExportResult:
        fd = self._fd
        if fd is None:
            return SpanExportResult.FAILURE
        data = _lines(spans).encode("utf-8", "replace")  # one write per batch of whole lines
        while data:  # a short write (disk full...) is finished, not lost
            data = data[os.write(fd, data):]
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True  # os.write leaves nothing buffered in this process


class ConsoleExporter:
    """One compact JSON line per span on ``stream`` (default: the current ``sys.stderr``)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def export(self, spans: Sequence[FastSpan]) -> SpanExportResult:
        stream = self._stream or sys.stderr
        stream.write(_lines(spans))
        stream.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def make_exporters(cfg: AuditConfig, *, otlp_timeout: float = 5.0) -> list[SpanRecordExporter]:
    """The exporters named by ``cfg.exporters`` ("none" adds nothing)."""
    out: list[SpanRecordExporter] = []
    for name in dict.fromkeys(cfg.exporters):
        if name == "console":
            out.append(ConsoleExporter())
        elif name == "jsonl":
            if cfg.jsonl_path is None:
                raise ConfigError("audit.jsonl_path: required when the jsonl exporter is enabled")
            out.append(JsonlExporter(cfg.jsonl_path))
        elif name == "otlp":
            out.append(otlp_exporter(cfg, otlp_timeout))
        elif name != "none":
            raise ConfigError(f"audit.exporters: unknown exporter {name!r} (none, console, jsonl, otlp)")
    return out

