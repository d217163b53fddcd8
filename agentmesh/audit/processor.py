"""The queue between ended spans and the exporters; it never blocks the call that ends a span.

:meth:`QueueSpanProcessor.on_end` (the sink's tracer calls it from ``FastSpan.end``) appends to a
bounded in-memory queue and returns; when the queue is full the span is dropped and counted. A
daemon thread takes batches off the queue and hands each batch to every exporter in turn. A slow,
failing or hung exporter only stalls that thread: calls go on, the queue fills, and drops are
counted. All counts are in spans:

* ``exported``: spans every exporter accepted;
* ``export_failures``: spans of a batch that at least one exporter refused or raised on;
* ``dropped``: spans that found the queue full.

:meth:`healthy` is False while the queue is full or since the last batch failed; the next batch
that every exporter accepts makes it True again.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence
from typing import Protocol

from opentelemetry.sdk.trace.export import SpanExportResult

from agentmesh.audit.fastspan import FastSpan

__all__ = ["QueueSpanProcessor", "SpanRecordExporter"]

log = logging.getLogger(__name__)


class SpanRecordExporter(Protocol):
    """What the queue hands ended spans to (in its own thread): the exporters of exporters.py."""

    def export(self, spans: Sequence[FastSpan]) -> SpanExportResult: ...

    def shutdown(self) -> None: ...


class QueueSpanProcessor:
    def __init__(
        self,
        exporters: Sequence[SpanRecordExporter],
        *,
        queue_size: int = 4096,
        max_batch: int = 512,
        schedule_delay: float = 0.5,
        name: str = "agentmesh-audit",
    ) -> None:
        if queue_size < 1 or max_batch < 1:
            raise ValueError("queue_size and max_batch must be >= 1")
        self._exporters = tuple(exporters)
        self._max = queue_size
        self._max_batch = min(max_batch, queue_size)
        self._delay = schedule_delay
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

    def _drain(self) -> None:
        while True:
            with self._lock:
                n = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(n)]
            if not batch:
                return
            self._export(batch)

    def _export(self, batch: list[FastSpan]) -> None:
        ok = True
        for exporter in self._exporters:
            try:
                result = exporter.export(batch)
            except Exception as e:
                result = SpanExportResult.FAILURE
                if self._last_ok:  # log the first failure of a run, not every batch
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
