"""An idle export thread sleeps until a span arrives: no timed wake-ups while nothing is queued (each cost
~0.14 ms of CPU on the 2-vCPU test VM: ~3 ms/s per exporter of every idle member), and no span is left
behind by the hand-over between a put and the worker going to sleep.

The worker's waits are seen through the event it is given (``wake``): a wait of IDLE_BACKSTOP is the idle
one (a put ends it at once; the backstop only bounds a wake-up lost to an exception). No test waits for
time to pass to see that nothing happened: the idle wait is observed as it starts, and the other tests
wait only for spans to be exported.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind

from agentmesh.audit import exportqueue
from agentmesh.audit.exportqueue import IDLE_BACKSTOP, ExportQueue
from agentmesh.audit.fastspan import FastSpan, FastTracer


class Recorder:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.lock = threading.Lock()
        self.got = threading.Condition(self.lock)
        self.fail = False

    def export(self, spans: Sequence[FastSpan]) -> SpanExportResult:
        with self.got:
            self.names.extend(span.name for span in spans)
            self.got.notify_all()
        return SpanExportResult.FAILURE if self.fail else SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        with self.got:
            return self.got.wait_for(lambda: len(self.names) >= n, timeout)


class WatchedEvent(threading.Event):
    """The worker's wake-up event, recording the timeout of each wait; ``idle`` is set when an idle wait (until
    a put, at most IDLE_BACKSTOP) starts, ``timed`` when a wait of the schedule does."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float | None] = []
        self.sets = 0
        self.idle = threading.Event()
        self.timed = threading.Event()

    def set(self) -> None:
        self.sets += 1
        super().set()

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        (self.idle if timeout == exportqueue.IDLE_BACKSTOP else self.timed).set()
        return super().wait(timeout)


@pytest.fixture
def make_queue() -> Iterator:
    made: list[ExportQueue] = []

    def make(recorder: Recorder, wake: threading.Event | None = None, **kw) -> ExportQueue:
        kw.setdefault("schedule_delay", 0.001)
        kw.setdefault("max_batch", 64)
        q = ExportQueue(recorder, "rec", queue_size=kw.pop("queue_size", 100_000), slice_budget=1.0,
                        thread_name="audit-test-idle", wake=wake, **kw)
        made.append(q)
        return q

    yield make
    for q in made:
        q.stop()
        q.join(5)


def _spans(n: int, prefix: str = "call") -> list[FastSpan]:
    tracer = FastTracer("ingestor", on_end=lambda span: None)
    out = []
    for i in range(n):
        span = tracer.start_span(f"{prefix}-{i}", kind=SpanKind.SERVER)
        span.end()
        out.append(span)
    return out


def test_an_idle_worker_waits_without_a_timeout_and_a_span_wakes_it(make_queue):
    recorder, wake = Recorder(), WatchedEvent()
    q = make_queue(recorder, wake)
    assert wake.idle.wait(5)  # nothing queued: the worker sleeps until a put
    assert wake.timeouts == [IDLE_BACKSTOP]  # (before: a wake-up every schedule_delay, forever)

    wake.idle.clear()
    q.put(_spans(1)[0])
    assert recorder.wait_for(1)  # exported with no flush: the put woke it
    assert wake.idle.wait(5)  # and it sleeps again once the queue is empty
    assert wake.timeouts[0] == IDLE_BACKSTOP and wake.timeouts[-1] == IDLE_BACKSTOP
    assert 0.001 in wake.timeouts[1:-1]  # the first span waited schedule_delay for others


def test_while_spans_keep_coming_a_put_does_not_wake_the_worker(make_queue):
    """Only a worker whose last round found nothing sleeps until a put: under load every round finds spans,
    so the worker keeps its schedule and no put pays for waking a thread."""
    recorder, wake = Recorder(), WatchedEvent()
    q = make_queue(recorder, wake, schedule_delay=3600.0)  # rounds happen only when a flush asks
    assert wake.idle.wait(5)
    q.put(_spans(1)[0])  # the hand-over: wakes the idle worker (1 set)
    assert q.flush_request().wait(5)  # (2) a round that exported a span
    q.put(_spans(1, "next")[0])  # the worker waits on its schedule, not idle: this put wakes no one
    assert wake.sets == 2
    assert q.flush_request().wait(5)  # (3)
    assert recorder.names == ["call-0", "next-0"]
    assert wake.timeouts.count(IDLE_BACKSTOP) == 1  # it has not slept until a put since the first span
    wake.idle.clear()
    assert q.flush_request().wait(5)  # a round with nothing to export...
    assert wake.idle.wait(5)  # ...and it sleeps until a put again


def test_a_flush_and_a_stop_wake_an_idle_worker(make_queue):
    recorder, wake = Recorder(), WatchedEvent()
    q = make_queue(recorder, wake, schedule_delay=3600.0)  # a schedule that never elapses in the test
    assert wake.idle.wait(5)
    assert q.flush_request().wait(5)  # a flush of nothing returns at once, the worker idle
    q.put(_spans(1)[0])
    assert q.flush_request().wait(5)  # one span, a schedule of an hour: the flush exports it now
    assert recorder.names == ["call-0"]
    q.stop()
    assert q.join(5)


def test_a_worker_whose_exporter_is_in_trouble_keeps_its_timed_wake_ups(make_queue):
    """Its failure summaries are paced by them (at most one a minute, while the trouble lasts)."""
    recorder, wake = Recorder(), WatchedEvent()
    recorder.fail = True
    q = make_queue(recorder, wake)
    assert wake.idle.wait(5)
    q.put(_spans(1)[0])
    assert recorder.wait_for(1)
    wake.timed.clear()
    assert wake.timed.wait(5)  # the queue is empty again, and the worker still wakes on its schedule
    wake.idle.clear()
    recorder.fail = False
    q.put(_spans(1, "later")[0])
    assert recorder.wait_for(2)
    assert wake.idle.wait(5)  # recovered: idle again


def test_no_span_is_left_behind_when_puts_race_the_worker_going_to_sleep(make_queue):
    """Threads end spans in bursts while the worker keeps emptying the queue and going idle; every span is
    exported without a flush (a lost wake-up would leave the last burst queued until the next span). The
    interpreter switches threads every microsecond here, so puts land inside the hand-over's few steps."""
    previous = sys.getswitchinterval()
    recorder = Recorder()
    q = make_queue(recorder, max_batch=100_000)  # no full-batch wake-ups: only the idle hand-over wakes it
    threads, per_thread, bursts = 4, 2_000, 200
    spans = [_spans(per_thread, f"t{t}") for t in range(threads)]

    def produce(mine: list[FastSpan]) -> None:
        step = per_thread // bursts
        for b in range(bursts):
            for span in mine[b * step:(b + 1) * step]:
                q.put(span)
            time.sleep(0)  # (a yield, not a wait: the worker may run between bursts)

    workers = [threading.Thread(target=produce, args=(mine,)) for mine in spans]
    sys.setswitchinterval(1e-6)
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
    finally:
        sys.setswitchinterval(previous)
    assert recorder.wait_for(threads * per_thread, timeout=2), f"{len(recorder.names)} exported"  # (< IDLE_BACKSTOP)
    assert sorted(recorder.names) == sorted(s.name for mine in spans for s in mine)


def test_a_span_ended_as_the_worker_goes_idle_is_not_left_behind(make_queue):
    """One span at a time, each put the moment the previous one was exported: that is when the worker
    goes back to sleep, so the puts land inside the hand-over; a lost wake-up would leave one queued."""
    recorder = Recorder()
    q = make_queue(recorder, schedule_delay=1e-5)
    spans = _spans(2_000)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for i, span in enumerate(spans):
            q.put(span)
            assert recorder.wait_for(i + 1, timeout=2), f"span {i} was not exported"  # (< IDLE_BACKSTOP)
    finally:
        sys.setswitchinterval(previous)


def test_a_wake_up_lost_to_an_interrupted_put_delays_spans_by_the_backstop_at_most(make_queue, monkeypatch):
    """A put interrupted between clearing ``_idle`` and waking the worker (a KeyboardInterrupt there) leaves
    the worker asleep with spans queued: the idle wait's backstop still exports them."""
    monkeypatch.setattr(exportqueue, "IDLE_BACKSTOP", 0.05)
    recorder, wake = Recorder(), WatchedEvent()
    q = make_queue(recorder, wake, max_batch=100_000)
    assert wake.idle.wait(5)
    q._queue.append(_spans(1)[0])  # what the interrupted put left: the span queued, no one woken
    assert recorder.wait_for(1, timeout=5)
