"""A slow, failing or unreachable exporter never blocks a call, nor another exporter: its spans are
dropped and counted, in its own queue."""

from __future__ import annotations

import socket
import sys
import time

import pytest
from opentelemetry.trace import SpanKind

from agentmesh.audit import make_exporters
from agentmesh.config import AuditConfig
from agentmesh.errors import ConfigError

#: Generous bound for one span.end() on a loaded CI machine; typical is a few microseconds.
FAST = 0.005


def totals(sink) -> dict[str, int]:
    """The sink's counts summed over its exporters (without the per-exporter ones)."""
    return {k: v for k, v in sink.stats.items() if k != "exporters"}


def _end_spans(sink, n: int) -> float:
    """Ends ``n`` spans; returns the slowest span.end() in seconds."""
    worst = 0.0
    for i in range(n):
        span = sink.tracer.start_span(f"call-{i}", kind=SpanKind.SERVER)
        t0 = time.perf_counter()
        span.end()
        worst = max(worst, time.perf_counter() - t0)
    return worst


def test_a_full_queue_drops_and_counts_without_blocking(make_sink, blocking):
    sink = make_sink("ingestor", [blocking], queue_size=4, max_batch=1)
    _end_spans(sink, 1)
    assert blocking.entered.wait(5)  # the worker now holds span 0 inside export()
    assert sink.available()

    assert _end_spans(sink, 4) < FAST  # fills the queue
    assert not sink.available()
    worst = _end_spans(sink, 1000)  # all dropped
    assert worst < FAST
    assert totals(sink) == {"dropped": 1000, "export_failures": 0, "exported": 0}

    blocking.release.set()
    assert sink.force_flush(5)
    assert totals(sink) == {"dropped": 1000, "export_failures": 0, "exported": 5}
    assert sink.available()
    assert len(blocking.spans) == 5


def test_a_raising_exporter_is_counted_and_makes_the_sink_unavailable_until_it_recovers(make_sink, recording):
    sink = make_sink("ingestor", [recording])
    recording.fail = True
    assert _end_spans(sink, 3) < FAST
    assert sink.force_flush(5)
    assert totals(sink) == {"dropped": 0, "export_failures": 3, "exported": 0}
    assert not sink.available()

    recording.fail = False
    _end_spans(sink, 2)
    assert sink.force_flush(5)
    assert totals(sink) == {"dropped": 0, "export_failures": 3, "exported": 2}
    assert sink.available()


def test_a_failing_exporter_fails_only_its_own_spans(make_sink, recording, broken):
    sink = make_sink("ingestor", [broken, recording])
    _end_spans(sink, 2)
    assert sink.force_flush(5)
    assert len(recording.spans) == 2
    assert sink.stats["exporters"] == {
        "recordingexporter": {"dropped": 0, "export_failures": 2, "exported": 0},  # (broken: the first one)
        "recordingexporter-2": {"dropped": 0, "export_failures": 0, "exported": 2},
    }
    assert not sink.available()  # no exporter named as required: every one must be healthy


class _CutShort:
    """An exporter whose every export fails after writing all but the last span of its batch whole (a
    disk that fills mid-write: JsonlExporter.landed)."""

    name = "jsonl"

    def __init__(self) -> None:
        self.landed = 0
        self.error: str | None = None

    def export(self, spans):
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.landed, self.error = len(spans) - 1, "EFBIG"
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        pass


def test_a_batch_cut_short_counts_what_landed_as_exported_and_only_the_rest_as_failed(make_sink):
    sink = make_sink("ingestor", [_CutShort()], max_batch=64, schedule_delay=60)
    _end_spans(sink, 5)
    assert sink.force_flush(5)
    stats = sink.stats["exporters"]["jsonl"]
    assert stats["exported"] + stats["export_failures"] == 5 and stats["dropped"] == 0
    assert stats["export_failures"] >= 1 and stats["exported"] >= 1  # one lost per slice, not the whole slice
    assert not sink.available()  # the export failed all the same


def test_a_hung_exporter_fills_and_drops_from_its_own_queue_only(make_sink, blocking, recording):
    sink = make_sink("ingestor", [blocking, recording], queue_size=4, max_batch=1, required=["recordingexporter"])
    _end_spans(sink, 1)
    assert blocking.entered.wait(5)  # its worker now holds span 0 inside export()
    assert sink.force_flush(5, exporters=["recordingexporter"])  # (on a busy machine it may not have yet)
    for _ in range(25):  # (the recording queue is drained between rounds: it never fills)
        assert _end_spans(sink, 4) < FAST
        assert sink.force_flush(5, exporters=["recordingexporter"])
    assert len(recording.spans) == 101
    stats = sink.stats["exporters"]
    assert stats["recordingexporter"] == {"dropped": 0, "export_failures": 0, "exported": 101}
    assert stats["blockingexporter"] == {"dropped": 96, "export_failures": 0, "exported": 0}  # 1 held + 4 queued
    assert sink.available()  # the required exporter is fine
    assert sink.force_flush(0.05) is False  # everything: the hung one too


def test_a_stopping_queue_whose_exporter_fails_drops_the_rest_instead_of_retrying(make_sink, broken):
    sink = make_sink("ingestor", [broken], schedule_delay=60, max_batch=2)
    _end_spans(sink, 9)
    assert sink.shutdown(5)
    assert totals(sink) == {"dropped": 7, "export_failures": 2, "exported": 0}  # one slice tried, then given up


def test_shutdown_with_a_hung_exporter_gives_up_after_its_timeout(make_sink, blocking):
    sink = make_sink("ingestor", [blocking], queue_size=8, max_batch=1)
    _end_spans(sink, 1)
    assert blocking.entered.wait(5)
    t0 = time.monotonic()
    assert sink.force_flush(0.05) is False
    assert sink.shutdown(0.05) is False
    assert time.monotonic() - t0 < 2
    assert not blocking.shut  # left open: the worker is still inside it
    _end_spans(sink, 1)
    assert sink.stats["dropped"] == 1  # a stopping sink accepts nothing more
    blocking.release.set()


def test_shutdown_exports_what_is_queued_and_closes_the_exporters(make_sink, recording):
    sink = make_sink("ingestor", [recording], schedule_delay=60)
    _end_spans(sink, 3)
    assert sink.shutdown(5)
    assert len(recording.spans) == 3 and recording.shut


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_otlp_collector_never_blocks_calls(make_sink):
    pytest.importorskip(
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        reason="opentelemetry-exporter-otlp-proto-grpc not installed (pip install 'agentmesh[otlp]')",
    )
    cfg = AuditConfig(exporters=("otlp",), otlp_endpoint=f"http://127.0.0.1:{_closed_port()}")
    sink = make_sink("ingestor", make_exporters(cfg, otlp_timeout=0.5), queue_size=8)
    assert _end_spans(sink, 50) < FAST
    assert sink.force_flush(10)
    stats = totals(sink)
    assert stats["exported"] == 0
    assert stats["export_failures"] >= 1
    assert stats["dropped"] + stats["export_failures"] == 50
    assert not sink.available()


def test_a_missing_otlp_package_is_a_config_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    cfg = AuditConfig(exporters=("otlp",), otlp_endpoint="http://127.0.0.1:4317")
    with pytest.raises(ConfigError, match=r"install agentmesh\[otlp\]"):
        make_exporters(cfg)


def test_a_close_during_a_backlog_gives_up_after_the_slice_in_flight_fails(blocking):
    """A slow, failing exporter working through a backlog when the sink closes: the slice it holds fails, the
    rest is dropped (counted) rather than tried one slow slice after another past the close's timeout."""
    from agentmesh.audit.fastspan import FastTracer
    from agentmesh.audit.processor import QueueSpanProcessor

    blocking.fail = True  # (once released: it raises)
    processor = QueueSpanProcessor([blocking], queue_size=100, schedule_delay=3600)
    tracer = FastTracer("ingestor", on_end=processor.on_end)
    for i in range(60):
        tracer.start_span(f"call-{i}", kind=SpanKind.SERVER).end()
    flushed = processor.queues["blockingexporter"].flush_request()  # the worker takes the 60 on: a first slice
    assert blocking.entered.wait(5)
    processor.queues["blockingexporter"].stop()
    blocking.release.set()
    assert processor.close(5) and flushed.wait(5)
    assert processor.stats == {"dropped": 52, "export_failures": 8, "exported": 0}  # 8: the first slice
