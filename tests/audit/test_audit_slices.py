"""The export thread works in slices: never more than ``max_batch`` spans per export call, fewer when
the measured cost per span says a slice would overrun ``slice_budget``; a backlog drains across many
slices; flush and close still export everything, and the counters count every span once.

No test waits for time to pass: the worker is woken by flushes, by a full slice, or by close, and the
cost per span comes from an injected CPU clock. How long a slice really holds the interpreter is
measured by ``benchmarks/exportpause.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind

from agentmesh.audit.fastspan import FastSpan, FastTracer
from agentmesh.audit.processor import QueueSpanProcessor

NEVER = 3600.0  # a schedule_delay that never elapses during a test: only flush, a full slice or close wake the worker


class SliceRecorder:
    """Keeps every slice it is given (in order); ``fail_calls`` are the export calls (0-based) it refuses.

    ``cpu`` is a fake CPU clock that each export advances by ``cost_per_span`` per span, and ``gate``
    (when set) holds every export until it is opened.
    """

    def __init__(self, *, cost_per_span: float = 0.0, fail_calls: frozenset[int] = frozenset()) -> None:
        self.slices: list[list[FastSpan]] = []
        self.cost_per_span = cost_per_span
        self.fail_calls = fail_calls
        self.now = 0.0
        self.entered = threading.Event()
        self.gate: threading.Event | None = None
        self.shut = False

    def cpu(self) -> float:
        return self.now

    def export(self, spans: Sequence[FastSpan]) -> SpanExportResult:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        call = len(self.slices)
        self.slices.append(list(spans))
        self.now += self.cost_per_span * len(spans)
        return SpanExportResult.FAILURE if call in self.fail_calls else SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.shut = True

    @property
    def sizes(self) -> list[int]:
        return [len(s) for s in self.slices]

    @property
    def names(self) -> list[str]:
        return [span.name for s in self.slices for span in s]


@pytest.fixture
def make_processor() -> Iterator[Callable[..., QueueSpanProcessor]]:
    made: list[tuple[QueueSpanProcessor, SliceRecorder]] = []

    def make(recorder: SliceRecorder, **kw: Any) -> QueueSpanProcessor:
        kw.setdefault("schedule_delay", NEVER)
        processor = QueueSpanProcessor([recorder], cpu_clock=recorder.cpu, **kw)
        made.append((processor, recorder))
        return processor

    yield make
    for processor, recorder in made:
        if recorder.gate is not None:
            recorder.gate.set()
        processor.close(timeout=5)


def _end(processor: QueueSpanProcessor, n: int, *, first: int = 0) -> None:
    tracer = FastTracer("ingestor", on_end=processor.on_end)
    for i in range(first, first + n):
        tracer.start_span(f"call-{i}", kind=SpanKind.SERVER, attributes={"i": i}).end()


def _names(n: int, *, first: int = 0) -> list[str]:
    return [f"call-{i}" for i in range(first, first + n)]


def test_a_slice_never_exceeds_max_batch_and_the_spans_keep_their_order(make_processor):
    recorder = SliceRecorder()
    processor = make_processor(recorder, max_batch=5)
    _end(processor, 123)
    assert processor.force_flush(5_000)
    assert max(recorder.sizes) <= 5
    assert recorder.names == _names(123)
    assert processor.stats == {"dropped": 0, "export_failures": 0, "exported": 123}


def test_a_backlog_is_drained_across_many_slices(make_processor):
    recorder = SliceRecorder()
    recorder.gate = threading.Event()
    processor = make_processor(recorder, max_batch=4, queue_size=1000)
    _end(processor, 4)  # a full slice wakes the worker, which then waits inside export()
    assert recorder.entered.wait(5)
    _end(processor, 200, first=4)  # the backlog piles up behind it
    recorder.gate.set()
    assert processor.force_flush(5_000)
    assert len(recorder.slices) >= 204 // 4
    assert max(recorder.sizes) <= 4
    assert recorder.names == _names(204)
    assert processor.stats["exported"] == 204


def test_slices_shrink_to_what_the_measured_cost_per_span_fits_in_the_budget(make_processor):
    recorder = SliceRecorder(cost_per_span=0.25)  # fake CPU seconds per span
    processor = make_processor(recorder, max_batch=64, slice_budget=1.0)
    _end(processor, 40)
    assert processor.force_flush(5_000)
    # the first slice is small (nothing measured yet); then 1.0 s / 0.25 s per span = 4 spans a slice
    assert recorder.sizes[0] <= 8
    assert set(recorder.sizes[1:]) == {4}
    assert recorder.names == _names(40)


def test_a_span_dearer_than_the_whole_budget_is_still_exported_one_at_a_time(make_processor):
    recorder = SliceRecorder(cost_per_span=5.0)
    processor = make_processor(recorder, max_batch=64, slice_budget=1.0)
    _end(processor, 20)
    assert processor.force_flush(5_000)
    assert set(recorder.sizes[1:]) == {1}
    assert processor.stats["exported"] == 20


def test_cheap_spans_go_in_full_slices(make_processor):
    recorder = SliceRecorder(cost_per_span=0.0)
    processor = make_processor(recorder, max_batch=16)
    _end(processor, 100)
    assert processor.force_flush(5_000)
    assert recorder.sizes.count(16) >= 5  # 100 spans: at most one short first slice and one short last one
    assert recorder.names == _names(100)


def test_a_full_slice_wakes_the_worker_without_a_flush(make_processor):
    recorder = SliceRecorder()
    processor = make_processor(recorder, max_batch=8)
    _end(processor, 7)
    assert not recorder.entered.is_set()  # below a slice's worth: waits for the schedule (never, here)
    _end(processor, 1, first=7)
    assert recorder.entered.wait(5)


def test_close_exports_the_whole_queue_in_slices_and_closes_the_exporter(make_processor):
    recorder = SliceRecorder()
    processor = make_processor(recorder, max_batch=50, queue_size=1000, slice_budget=1.0)
    recorder.cost_per_span = 0.1  # 10 spans a slice once measured
    _end(processor, 49)  # below max_batch: nothing wakes the worker until close
    assert processor.close(5)
    assert recorder.names == _names(49)
    assert len(recorder.slices) >= 5
    assert recorder.shut
    assert processor.stats == {"dropped": 0, "export_failures": 0, "exported": 49}


def test_counters_count_every_span_of_each_slice_once(make_processor):
    recorder = SliceRecorder(fail_calls=frozenset({1, 3}))
    processor = make_processor(recorder, max_batch=5, queue_size=30)
    recorder.gate = threading.Event()
    _end(processor, 5)
    assert recorder.entered.wait(5)
    _end(processor, 40, first=5)  # 5 in the exporter, 30 queued, 10 dropped
    recorder.gate.set()
    assert processor.force_flush(5_000)
    failed = sum(recorder.sizes[i] for i in (1, 3))
    assert processor.stats == {"dropped": 10, "export_failures": failed, "exported": 35 - failed}
    assert processor.healthy()  # the last slice succeeded


def test_a_failed_last_slice_makes_the_processor_unhealthy(make_processor):
    recorder = SliceRecorder(fail_calls=frozenset({0}))
    processor = make_processor(recorder, max_batch=8)
    _end(processor, 3)
    assert processor.force_flush(5_000)
    assert processor.stats == {"dropped": 0, "export_failures": 3, "exported": 0}
    assert not processor.healthy()


def test_a_flush_returns_while_calls_keep_ending_spans(make_processor):
    """A flush waits for the spans queued before it, not for a queue that never empties."""
    recorder = SliceRecorder()
    processor = make_processor(recorder, max_batch=4, queue_size=10_000)
    tracer = FastTracer("ingestor", on_end=processor.on_end)
    more = threading.Event()

    def export_and_end_more(spans: Sequence[FastSpan]) -> SpanExportResult:
        if not more.is_set():  # every slice brings new spans, as busy calls do
            for _ in range(4):
                tracer.start_span("later", kind=SpanKind.SERVER).end()
        return SliceRecorder.export(recorder, spans)

    recorder.export = export_and_end_more  # type: ignore[method-assign]
    _end(processor, 3)
    assert processor.force_flush(5_000)
    more.set()
    assert recorder.names[:3] == _names(3)


@pytest.mark.parametrize("kw", [{"slice_budget": 0}, {"schedule_delay": 0}, {"max_batch": 0}])
def test_nonsense_settings_are_refused(kw):
    with pytest.raises(ValueError):
        QueueSpanProcessor([], **kw)


class HoldingRecorder(SliceRecorder):
    """An exporter whose export also costs a fixed amount per call that lets go of the interpreter (a write):
    the CPU clock advances by both, ``held`` says only the per-span part (as the JSONL exporter's does)."""

    def __init__(self, *, cost_per_span: float, fixed: float, says_held: bool) -> None:
        super().__init__(cost_per_span=cost_per_span)
        self.fixed = fixed
        self.says_held = says_held
        self.held: float | None = None

    def export(self, spans: Sequence[FastSpan]) -> SpanExportResult:
        result = super().export(spans)
        self.now += self.fixed
        if self.says_held:
            self.held = self.cost_per_span * len(spans)
        return result


@pytest.mark.parametrize(("says_held", "expected"), [(True, 4), (False, 1)])
def test_slices_are_sized_by_the_time_an_export_holds_the_interpreter_when_the_exporter_says_it(
        make_processor, says_held, expected):
    # 0.25 s a span while holding the lock, 2 s a slice in a write that lets go of it, budget 1 s: sized by the
    # held part, 4 spans a slice; counting the write as a cost per span shrank slices to 1 (each slice then
    # paid the write for one span: the spiral a busy member fell into, 84 us a span against ~25)
    recorder = HoldingRecorder(cost_per_span=0.25, fixed=2.0, says_held=says_held)
    processor = make_processor(recorder, max_batch=64, slice_budget=1.0)
    _end(processor, 40)
    assert processor.force_flush(5_000)
    assert set(recorder.sizes[5:]) == {expected}  # (once the smoothed cost has settled)
    assert recorder.names == _names(40)
