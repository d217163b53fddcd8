"""Span exporters: console, JSONL file and OTLP (otlp.py); each redacts every span before it leaves.

One JSONL line per span (the input of ``agentmesh audit show``; a stable schema)::

    {"trace_id": "<32 hex>", "span_id": "<16 hex>", "parent_span_id": "<16 hex>" | null,
     "name": "agentmesh.v1.Agent/Invoke", "kind": "server" | "client" | "internal",
     "start": <epoch seconds, float>, "end": <epoch seconds, float>, "duration_ms": <float>,
     "service": "<service.name: the agent>", "status": "OK" | "ERROR",
     "attributes": {...}, "events": [{"name": "...", "time": <epoch seconds>, "attributes": {...}}]}

Attributes and event attributes pass through :func:`agentmesh.audit.redact.safe_attributes`. Each
exporter reads the ended spans of fastspan.py directly, in the export thread of its own queue
(processor.py), and has a ``name`` (``console``, ``jsonl``, ``otlp``: the label of its counts and the
name ``audit.required`` may give) and a ``where`` (what it writes to, as logs may show it).
The JSONL file is written by jsonlfile.py: ``O_APPEND``, ``0600``, one ``os.write`` per batch of whole
lines (several processes can append to one log without interleaving lines), never through a symbolic
link, and rotation by size and age (``audit.jsonl_rotate_bytes``, ``audit.jsonl_rotate_seconds``,
``audit.jsonl_keep``) that never splits or loses a line. A write that fails (``ENOSPC``...) is a refused
export whose ``error`` is the errno's name; :attr:`JsonlExporter.landed` says how many of its spans were
written whole all the same (a write that failed part way), the others are lost, and the line it cut is
ended by the next write.
"""

from __future__ import annotations

import errno
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import StatusCode

from agentmesh.audit.fastspan import FastSpan
from agentmesh.audit.jsonlfile import PartialWrite, RotatingFile
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
    """Appends one JSON line per span to ``path`` (see the module docstring); ``rotate_bytes`` and
    ``rotate_seconds`` (0: never) and ``keep`` (rotated files kept; 0: all) as in jsonlfile.py."""

    name = "jsonl"

    def __init__(self, path: Path, *, rotate_bytes: int = 0, rotate_seconds: float = 0.0, keep: int = 0) -> None:
        self.path = path
        self.where = str(path)
        self.error: str | None = None  # the errno name of the last refused export (ENOSPC, ELOOP...)
        self.landed = 0  # spans of the last export whose line was written whole
        #: CPU seconds the last export held the interpreter: building its lines (the write lets go of it)
        self.held: float | None = None
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._file: RotatingFile | None = RotatingFile(
                path, rotate_bytes=rotate_bytes, rotate_seconds=rotate_seconds, keep=keep)
        except OSError as e:
            raise ConfigError(f"audit.jsonl_path: cannot open {path} for appending ({e.strerror})") from None

    def export(self, spans: Sequence[FastSpan]) -> SpanExportResult:
        self.error, self.landed, self.held = None, 0, None  # (held: None unless the lines were built)
        file = self._file
        if file is None:
            return SpanExportResult.FAILURE
        started = time.thread_time()
        data = _lines(spans).encode("utf-8", "replace")  # (raising here leaves held None)
        self.held = time.thread_time() - started
        try:
            file.write(data)  # one write per batch of whole lines
        except OSError as e:
            self.landed = e.lines if isinstance(e, PartialWrite) else 0
            self.error = errno.errorcode.get(e.errno or 0, type(e).__name__)  # (never the message: it names paths)
            return SpanExportResult.FAILURE
        self.landed = len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True  # os.write leaves nothing buffered in this process


class ConsoleExporter:
    """One compact JSON line per span on ``stream`` (default: the current ``sys.stderr``)."""

    name = "console"
    where = "stderr"

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def export(self, spans: Sequence[FastSpan]) -> SpanExportResult:
        stream = self._stream or sys.stderr
        stream.write(_lines(spans))
        stream.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def make_exporters(cfg: AuditConfig, *, otlp_timeout: float | None = None) -> list[SpanRecordExporter]:
    """The exporters named by ``cfg.exporters`` ("none" adds nothing); ``otlp_timeout`` (seconds) overrides
    ``cfg.otlp_timeout``."""
    out: list[SpanRecordExporter] = []
    for name in dict.fromkeys(cfg.exporters):
        if name == "console":
            out.append(ConsoleExporter())
        elif name == "jsonl":
            if cfg.jsonl_path is None:
                raise ConfigError("audit.jsonl_path: required when the jsonl exporter is enabled")
            out.append(JsonlExporter(cfg.jsonl_path, rotate_bytes=cfg.jsonl_rotate_bytes,
                                     rotate_seconds=cfg.jsonl_rotate_seconds, keep=cfg.jsonl_keep))
        elif name == "otlp":
            out.append(otlp_exporter(cfg, cfg.otlp_timeout if otlp_timeout is None else otlp_timeout))
        elif name != "none":
            raise ConfigError(f"audit.exporters: unknown exporter {name!r} (none, console, jsonl, otlp)")
    return out
