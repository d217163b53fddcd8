"""Shared helpers for the audit tests: sinks that are always shut down, and controllable exporters."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from agentmesh.audit import AuditSink


class RecordingExporter(SpanExporter):
    """Keeps the spans it is given; ``fail`` makes it raise instead.

    A sink's exporter (it is given FastSpan records) or, inside ``RedactingExporter``, the SDK
    exporter that OTLP would be (it is given redacted ``ReadableSpan`` s).
    """

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.fail = False
        self.shut = False

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        if self.fail:
            raise ConnectionError("collector is down")
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.shut = True


class BlockingExporter(RecordingExporter):
    """Blocks inside export() until ``release`` is set; ``entered`` says a batch is being held."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        self.entered.set()
        self.release.wait(30)
        return super().export(spans)


@pytest.fixture
def make_sink() -> Iterator[Callable[..., AuditSink]]:
    sinks: list[AuditSink] = []
    releases: list[threading.Event] = []

    def make(service: str = "ingestor", exporters: Sequence[SpanExporter] = (), **kw: Any) -> AuditSink:
        for e in exporters:
            if isinstance(e, BlockingExporter):
                releases.append(e.release)
        sink = AuditSink(service, exporters, **kw)
        sinks.append(sink)
        return sink

    yield make
    for r in releases:
        r.set()
    for s in sinks:
        s.shutdown(timeout=5)


@pytest.fixture
def recording() -> RecordingExporter:
    return RecordingExporter()


@pytest.fixture
def broken() -> RecordingExporter:
    exporter = RecordingExporter()
    exporter.fail = True
    return exporter


@pytest.fixture
def blocking() -> BlockingExporter:
    return BlockingExporter()


@pytest.fixture
def read_jsonl() -> Callable[[Path], list[dict[str, Any]]]:
    def read(path: Path) -> list[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    return read
