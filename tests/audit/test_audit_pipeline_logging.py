"""An exporter's trouble is logged once, then summarized at most once per interval, then its recovery:
the decision (failurelog.next_line) table-tested, and the worker's lines under an injected clock."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind

from agentmesh.audit.failurelog import FailureLog, Seen, next_line, safe_endpoint

WHERE = "https://collector.example:4317"
T = FailureLog(trouble=True, since=100.0, failed=10, dropped=5, seen_dropped=40)


@pytest.mark.parametrize(("state", "seen", "now", "line", "after"), [
    # all is well: nothing to say
    (FailureLog(), Seen(True, 8), 0.0, None, FailureLog()),
    (FailureLog(), Seen(None), 0.0, None, FailureLog()),
    # the first failure: one line, with the error class; the summary window starts now
    (FailureLog(), Seen(False, 8, "DEADLINE_EXCEEDED"), 5.0,
     f"otlp exporter ({WHERE}) failing: DEADLINE_EXCEEDED (8 spans not exported); "
     "a summary at most every 60 s until it recovers", FailureLog(True, 5.0, 0, 0, 0)),
    (FailureLog(seen_dropped=3), Seen(False, 2, None, 10), 5.0,
     f"otlp exporter ({WHERE}) failing: export refused (2 spans not exported, 7 dropped); "
     "a summary at most every 60 s until it recovers", FailureLog(True, 5.0, 0, 0, 10)),
    # drops alone are trouble too (a slow exporter that cannot keep up)
    (FailureLog(), Seen(True, 8, None, 4), 5.0,
     f"otlp exporter ({WHERE}) cannot keep up: its queue is full (4 spans dropped); "
     "a summary at most every 60 s until it recovers", FailureLog(True, 5.0, 0, 0, 4)),
    # in trouble, within the interval: counted, not logged
    (T, Seen(False, 8, "DEADLINE_EXCEEDED", 50), 159.9, None, FailureLog(True, 100.0, 18, 15, 50)),
    (T, Seen(None, 0, None, 41), 120.0, None, FailureLog(True, 100.0, 10, 6, 41)),
    # the interval has passed: one summary, a new window
    (T, Seen(False, 8, "DEADLINE_EXCEEDED", 50), 160.0,
     "otlp exporter: 18 spans failed / 15 dropped in the last 60 s", FailureLog(True, 160.0, 0, 0, 50)),
    (T, Seen(None, 0, None, 40), 400.0,
     "otlp exporter: 10 spans failed / 5 dropped in the last 300 s", FailureLog(True, 400.0, 0, 0, 40)),
    # nothing new to summarize: no line, however long it has been
    (FailureLog(True, 100.0, 0, 0, 40), Seen(None, 0, None, 40), 1000.0, None, FailureLog(True, 100.0, 0, 0, 40)),
    # a slice exported and no new drop: recovered, with what the window held
    (T, Seen(True, 8, None, 40), 130.0,
     f"otlp exporter ({WHERE}) recovered: 10 spans failed / 5 dropped since the last line",
     FailureLog(False, 130.0, 0, 0, 40)),
    # exported, but the queue still drops: not recovered
    (T, Seen(True, 8, None, 42), 130.0, None, FailureLog(True, 100.0, 10, 7, 42)),
])
def test_next_line(state: FailureLog, seen: Seen, now: float, line: str | None, after: FailureLog) -> None:
    assert next_line(state, seen, now, name="otlp", where=WHERE, interval=60.0) == (after, line)


@pytest.mark.parametrize(("endpoint", "shown"), [
    ("http://127.0.0.1:4317", "http://127.0.0.1:4317"),
    ("https://user:hunter2@collector.example:4317/v1/traces?token=s3cret", "https://collector.example:4317"),
    ("collector.example:4317", "collector.example:4317"),
    ("http://[::1]:4317", "http://[::1]:4317"),
    ("http://host:notaport", "http://host:?"),
    ("http://[::1", "?"),
])
def test_an_endpoint_is_logged_without_credentials_path_or_query(endpoint: str, shown: str) -> None:
    assert safe_endpoint(endpoint) == shown


class FlakyExporter:
    """Raises (with a message that must never be logged) while ``fail`` is set."""

    name = "otlp"
    where = safe_endpoint("https://alice:hunter2@collector.example:4317/?api_key=s3cret")

    def __init__(self) -> None:
        self.fail = True
        self.exported = 0

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        if self.fail:
            raise ConnectionError("refused by collector.example, api_key=s3cret")
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def test_the_worker_logs_a_failure_once_then_a_summary_per_interval_then_the_recovery(
    make_sink, caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    exporter = FlakyExporter()
    sink = make_sink("ingestor", [exporter], schedule_delay=3600, clock=lambda: now[0], log_interval=60.0)
    caplog.set_level(logging.WARNING, logger="agentmesh.audit")
    every: list[str] = []

    def round_at(t: float, spans: int) -> list[str]:
        now[0] = t
        caplog.clear()
        for i in range(spans):
            sink.tracer.start_span(f"s{i}", kind=SpanKind.SERVER).end()
        assert sink.force_flush(5)
        every.extend(r.getMessage() for r in caplog.records)
        return [r.getMessage() for r in caplog.records]

    assert round_at(1000.0, 3) == [
        "audit otlp exporter (https://collector.example:4317) failing: ConnectionError (3 spans not exported); "
        "a summary at most every 60 s until it recovers"]
    for t in (1001.0, 1030.0, 1059.0):  # every slice fails; nothing more is logged within the minute
        assert round_at(t, 2) == []
    assert round_at(1060.0, 1) == ["audit otlp exporter: 7 spans failed / 0 dropped in the last 60 s"]
    assert round_at(1100.0, 4) == []
    exporter.fail = False
    assert round_at(1110.0, 2) == ["audit otlp exporter (https://collector.example:4317) recovered: "
                                   "4 spans failed / 0 dropped since the last line"]
    assert round_at(1200.0, 5) == [] and round_at(1300.0, 5) == []  # all well: silence
    exporter.fail = True
    assert len(round_at(1301.0, 1)) == 1  # a new failure is news again
    assert len(every) == 4 and not [m for m in every if "s3cret" in m or "hunter2" in m or "alice" in m]
    assert {k: v for k, v in sink.stats.items() if k != "exporters"} == {
        "dropped": 0, "export_failures": 15, "exported": 12}
