"""A slow, failing or unreachable exporter never blocks a call: spans are dropped and counted."""

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
    assert sink.stats == {"dropped": 1000, "export_failures": 0, "exported": 0}

    blocking.release.set()
    assert sink.force_flush(5)
    assert sink.stats == {"dropped": 1000, "export_failures": 0, "exported": 5}
    assert sink.available()
    assert len(blocking.spans) == 5


def test_a_raising_exporter_is_counted_and_makes_the_sink_unavailable_until_it_recovers(make_sink, recording):
    sink = make_sink("ingestor", [recording])
    recording.fail = True
    assert _end_spans(sink, 3) < FAST
    assert sink.force_flush(5)
    assert sink.stats == {"dropped": 0, "export_failures": 3, "exported": 0}
    assert not sink.available()

    recording.fail = False
    _end_spans(sink, 2)
    assert sink.force_flush(5)
    assert sink.stats == {"dropped": 0, "export_failures": 3, "exported": 2}
    assert sink.available()


def test_one_failing_exporter_fails_the_batch_but_the_others_still_get_it(make_sink, recording, broken):
    sink = make_sink("ingestor", [broken, recording])
    _end_spans(sink, 2)
    assert sink.force_flush(5)
    assert len(recording.spans) == 2
    assert sink.stats["export_failures"] == 2 and not sink.available()


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
    stats = sink.stats
    assert stats["exported"] == 0
    assert stats["export_failures"] >= 1
    assert stats["dropped"] + stats["export_failures"] == 50
    assert not sink.available()


def test_a_missing_otlp_package_is_a_config_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    cfg = AuditConfig(exporters=("otlp",), otlp_endpoint="http://127.0.0.1:4317")
    with pytest.raises(ConfigError, match=r"install agentmesh\[otlp\]"):
        make_exporters(cfg)
