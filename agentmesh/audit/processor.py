"""The queue between ended spans and the exporters; it never blocks the call that ends a span, and
exporting never holds up the thread that serves calls.

:meth:`QueueSpanProcessor.on_end` (the sink's tracer calls it from ``FastSpan.end``) appends to a
bounded in-memory queue and returns; when the queue is full the span is dropped and counted. A
daemon thread exports the queue in *slices*. A slow, failing or hung exporter only stalls that
thread: calls go on, the queue fills, and drops are counted. All counts are in spans:

* ``exported``: spans every exporter accepted;
* ``export_failures``: spans of a slice that at least one exporter refused or raised on;
* ``dropped``: spans that found the queue full.

:meth:`healthy` is False while the queue is full or since the last slice failed; the next slice
that every exporter accepts makes it True again.

Why slices. Turning spans into lines (or protobuf) is Python code, and the export thread holds the
interpreter lock (GIL) while it runs: the event loop that serves calls waits for the lock until the
export thread lets go of it, which CPython forces only every 5 ms (``sys.getswitchinterval()``).
512-span batches held it for milliseconds and showed up in the p99 of every call
(``benchmarks/exportpause.py``). So the worker:

* wakes every ``schedule_delay`` seconds, or as soon as ``max_batch`` spans are queued, so spans
  are short-lived (one that waits half a second outlives young garbage collections and is then
  walked by full ones);
* hands the exporters at most ``max_batch`` spans at a time, fewer when the exporters' measured
  cost per span (the export thread's CPU time: about the time a slice holds the lock) says a slice
  would take longer than ``slice_budget`` seconds; the cost is re-measured on every slice, so the
  bound holds for a costlier exporter (OTLP) or a slower machine too;
* sleeps briefly (:data:`SLICE_GAP`) between slices while more are queued, so a thread waiting for
  the lock (the event loop) takes it at once rather than after the switch interval.

Small slices cost CPU: at 1000 spans/s on a 2-vCPU test machine, 0.2 ms slices (about 5 JSONL spans)
made the export ~30 us per span instead of ~20 us in 512-span batches, and took the event loop's
added p99 from +3.2 ms to +0.19 ms.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from opentelemetry.sdk.trace.export import SpanExportResult

from agentmesh.audit.fastspan import FastSpan

__all__ = ["SLICE_GAP", "QueueSpanProcessor", "SpanRecordExporter"]

log = logging.getLogger(__name__)

#: seconds the worker sleeps between two slices while more spans are queued: it lets go of the
#: interpreter lock for long enough that a thread waiting for it (the event loop) takes it
SLICE_GAP = 0.00005
#: spans in the first slice, before the exporters' cost per span has been measured
_FIRST_SLICE = 8


class SpanRecordExporter(Protocol):
    """What the queue hands ended spans to (in its own thread): the exporters of exporters.py."""

    def export(self, spans: Sequence[FastSpan]) -> SpanExportResult: ...

    def shutdown(self) -> None: ...


class QueueSpanProcessor:
    """Queues ended spans (:meth:`on_end`) and exports them from a daemon thread, in slices.

    ``max_batch``: most spans in one export call, and how many queued spans wake the worker before
    ``schedule_delay`` (seconds) has passed. ``slice_budget``: the exporters' CPU time, in seconds,
    one slice aims to stay within (a slice holds at least one span, so a single span slower than the
    budget is still exported), measured with ``cpu_clock`` (seconds; the export thread's CPU time).
    """

    def __init__(
        self,
        exporters: Sequence[SpanRecordExporter],
        *,
        queue_size: int = 4096,
        max_batch: int = 64,
        schedule_delay: float = 0.05,
        slice_budget: float = 0.0002,
        name: str = "agentmesh-audit",
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        if queue_size < 1 or max_batch < 1:
            raise ValueError("queue_size and max_batch must be >= 1")
        if schedule_delay <= 0 or slice_budget <= 0:
            raise ValueError("schedule_delay and slice_budget must be > 0")
        self._exporters = tuple(exporters)
        self._max = queue_size
        self._max_batch = min(max_batch, queue_size)
        self._delay = schedule_delay
        self._budget = slice_budget
        self._cpu_clock = cpu_clock
        self._span_cost: float | None = None  # the exporters' CPU seconds per span, smoothed
        self._queue: collections.deque[FastSpan] = collections.deque()
        self._lock = threading.Lock()  # guards the queue length check and the counters
        self._wake = threading.Event()
        self._flush_waiters: list[threading.Event] = []
        self._stopping = False
        self._done = False  # the worker has exited
        self._last_ok = True
        self.dropped = 0
        self.export_failures = 0
        self.exported = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- the hot path ---------------------------------------------------------------------------

    def on_end(self, span: FastSpan) -> None:
        with self._lock:
            if self._stopping or len(self._queue) >= self._max:
                self.dropped += 1
                return
            self._queue.append(span)
            wake = len(self._queue) == self._max_batch
        if wake:
            self._wake.set()

    # -- state ----------------------------------------------------------------------------------

    def healthy(self) -> bool:
        return self._last_ok and len(self._queue) < self._max

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "dropped": self.dropped,
                "export_failures": self.export_failures,
                "exported": self.exported,
            }

    # -- flushing -------------------------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Waits until everything queued so far has been handed to the exporters."""
        done = threading.Event()
        with self._lock:
            if self._done:
                return not self._queue
            self._flush_waiters.append(done)
        self._wake.set()
        return done.wait(timeout_millis / 1000)

    def shutdown(self) -> None:
        self.close()

    def close(self, timeout: float = 5.0) -> bool:
        """Stops accepting spans, exports what is queued and closes the exporters.

        Returns False when the worker did not finish within ``timeout`` (a hung exporter); the
        exporters are then left open, since the worker may still be inside one of them.
        """
        with self._lock:
            self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        for exporter in self._exporters:
            try:
                exporter.shutdown()
            except Exception:
                log.warning("audit exporter %s failed to shut down", type(exporter).__name__, exc_info=True)
        return True

    # -- the worker -----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self._delay)
            self._wake.clear()
            with self._lock:
                waiters, self._flush_waiters = self._flush_waiters, []
                stopping = self._stopping
            self._drain()
            for w in waiters:
                w.set()
            if stopping:
                with self._lock:
                    self._done = True
                    waiters, self._flush_waiters = self._flush_waiters, []
                for w in waiters:
                    w.set()
                return

    def _slice_size(self) -> int:
        """How many spans the next slice takes: what fits ``slice_budget`` at the measured cost."""
        cost = self._span_cost
        if cost is None:
            return min(_FIRST_SLICE, self._max_batch)
        return max(1, min(self._max_batch, int(self._budget / cost) if cost > 0 else self._max_batch))

    def _drain(self) -> None:
        """Exports the spans queued when it starts, a slice at a time (later ones wait for the next round,
        so a flush returns even while calls keep ending spans)."""
        with self._lock:
            left = len(self._queue)
        while left > 0:
            with self._lock:
                n = min(len(self._queue), left, self._slice_size())
                batch = [self._queue.popleft() for _ in range(n)]
            if not batch:
                return
            left -= n
            started = self._cpu_clock()
            self._export(batch)
            cost = (self._cpu_clock() - started) / n
            previous = self._span_cost
            self._span_cost = cost if previous is None else previous + (cost - previous) / 4
            del batch  # short-lived spans: nothing holds them once exported
            if left > 0:
                time.sleep(SLICE_GAP)

    def _export(self, batch: list[FastSpan]) -> None:
        ok = True
        for exporter in self._exporters:
            try:
                result = exporter.export(batch)
            except Exception as e:
                result = SpanExportResult.FAILURE
                if self._last_ok:  # log the first failure of a run, not every slice
                    log.warning("audit exporter %s raised %s", type(exporter).__name__, type(e).__name__)
            if result is not SpanExportResult.SUCCESS:
                ok = False
        if not ok and self._last_ok:
            log.warning("audit export failed; %d spans not exported", len(batch))
        with self._lock:
            if ok:
                self.exported += len(batch)
            else:
                self.export_failures += len(batch)
            self._last_ok = ok
