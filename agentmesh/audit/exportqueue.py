"""One exporter's bounded queue and the daemon thread that exports it in slices (processor.py says why
slices, and what the counts mean)."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from opentelemetry.sdk.trace.export import SpanExportResult

from agentmesh.audit.failurelog import FailureLog, Seen, next_line
from agentmesh.audit.fastspan import FastSpan

__all__ = ["IDLE_BACKSTOP", "SLICE_GAP", "ExportQueue", "SpanRecordExporter", "exporter_names"]

log = logging.getLogger("agentmesh.audit.processor")

#: seconds the worker sleeps between two slices while more spans are queued: it lets go of the
#: interpreter lock for long enough that a thread waiting for it (the event loop) takes it
SLICE_GAP = 0.00005
#: spans in the first slice, before the exporter's cost per span has been measured
_FIRST_SLICE = 8
#: seconds an idle worker (nothing queued) sleeps at most: a span's put wakes it at once; this only bounds how
#: long a wake-up lost to an exception between a put's two steps (a KeyboardInterrupt) could leave spans queued
IDLE_BACKSTOP = 5.0


class SpanRecordExporter(Protocol):
    """What a queue hands ended spans to (in its own thread): the exporters of exporters.py. They may
    also have a ``name`` (the label of their counts), a ``where`` (what they write to, as it may be
    logged), an ``error`` (what their last refused export failed with: an error class or code) and a
    ``held`` (the CPU seconds their last export held the interpreter, when the rest of it, a write or a
    send, lets go of it: the part that can pause the event loop, by which slices are sized). An exporter
    with ``held`` sets it on every export, to None when it cannot tell (an export that raised): the
    slice is then measured whole."""

    def export(self, spans: Sequence[FastSpan]) -> SpanExportResult: ...

    def shutdown(self) -> None: ...


def exporter_names(exporters: Sequence[object]) -> list[str]:
    """Each exporter's label: its ``name`` attribute, else its class's name; repeats get ``-2``, ``-3``..."""
    out: list[str] = []
    for e in exporters:
        base = str(getattr(e, "name", "") or type(e).__name__.lower())
        name, n = base, 1
        while name in out:
            n += 1
            name = f"{base}-{n}"
        out.append(name)
    return out


class ExportQueue:
    """Queues ended spans for one exporter (:meth:`put`) and exports them from a daemon thread, in slices."""

    def __init__(
        self,
        exporter: SpanRecordExporter,
        name: str,
        *,
        queue_size: int,
        max_batch: int,
        schedule_delay: float,
        slice_budget: float,
        thread_name: str,
        cpu_clock: Callable[[], float] = time.thread_time,
        clock: Callable[[], float] = time.monotonic,
        log_interval: float = 60.0,
        wake: threading.Event | None = None,
    ) -> None:
        self.exporter = exporter
        self.name = name
        self.where = str(getattr(exporter, "where", "") or name)
        self._max = queue_size
        self._max_batch = min(max_batch, queue_size)
        self._delay = schedule_delay
        self._budget = slice_budget
        self._cpu_clock = cpu_clock
        self._clock = clock
        self._log_interval = log_interval
        self._log = FailureLog()
        self._span_cost: float | None = None  # the exporter's CPU seconds per span, smoothed
        self._queue: collections.deque[FastSpan] = collections.deque()
        self._lock = threading.Lock()  # guards the flush waiters, stopping, and the drop counter
        self._wake = wake if wake is not None else threading.Event()  # (a test's own, to see how the worker waits)
        self._idle = False  # the worker sleeps until a put wakes it (set and read without the lock: see _wait)
        self._flush_waiters: list[threading.Event] = []
        self._stopping = False
        self._done = False  # the worker has exited
        self._last_ok = True
        self.dropped = 0  # (written under the lock: several threads may end spans)
        self.export_failures = 0  # (these two only by the worker)
        self.exported = 0
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._thread.start()

    # -- the hot path: no lock unless the span is dropped ---------------------------------------

    def put(self, span: FastSpan) -> None:
        queue = self._queue
        if self._stopping or len(queue) >= self._max:
            with self._lock:
                self.dropped += 1
            return
        queue.append(span)  # (deque.append and the worker's popleft are thread-safe)
        if self._idle or len(queue) == self._max_batch:
            self._idle = False
            self._wake.set()

    # -- state ----------------------------------------------------------------------------------

    def healthy(self) -> bool:
        return self._last_ok and len(self._queue) < self._max

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"dropped": self.dropped, "export_failures": self.export_failures, "exported": self.exported}

    def flush_request(self) -> threading.Event:
        """An event set once everything queued by now has been handed to the exporter."""
        done = threading.Event()
        with self._lock:
            if self._done:
                if not self._queue:
                    done.set()
                return done
            self._flush_waiters.append(done)
        self._wake.set()
        return done

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        self._wake.set()

    def join(self, timeout: float) -> bool:
        """Waits for the worker to finish, then closes the exporter; False (exporter left open) if it did not."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        with self._lock:  # a span appended while the worker finished: counted, not silently lost
            self.dropped += len(self._queue)
            self._queue.clear()
        try:
            self.exporter.shutdown()
        except Exception as e:
            log.warning("audit %s exporter failed to shut down: %s", self.name, type(e).__name__)
        return True

    # -- the worker -----------------------------------------------------------------------------

    def _run(self) -> None:
        quiet = True  # the last round found nothing to export (and at start: nothing yet)
        while True:
            self._wait(quiet)
            with self._lock:
                waiters, self._flush_waiters = self._flush_waiters, []
                stopping = self._stopping
            quiet = not self._queue
            self._drain(stopping)
            self._report(Seen(None, dropped=self.dropped))  # (before the flush returns: what it logs is logged)
            for w in waiters:
                w.set()
            if stopping:
                with self._lock:
                    self._done = True
                    waiters, self._flush_waiters = self._flush_waiters, []
                for w in waiters:
                    w.set()
                return

    def _wait(self, quiet: bool) -> None:
        """Until there is work: spans queued ``schedule_delay`` ago (or a full batch, ``max_batch``), a flush,
        or a stop. Once a round found nothing to export (``quiet``), and still nothing is queued nor to
        report, the worker sleeps until a put wakes it (at most :data:`IDLE_BACKSTOP`), so an idle member's
        export threads do not wake on a timer: a wake-up costs ~0.14 ms of CPU on the 2-vCPU test VM, and
        20 a second were ~3 ms/s per exporter. The first span then waits ``schedule_delay`` for others.
        While spans keep coming (one or more every ``schedule_delay``), every round finds some and the worker
        keeps its timed wake-ups: no put pays for waking it (an ``Event.set`` that wakes a thread: ~10-30 us
        on the caller's thread here), and it wakes no more often than it did.

        The hand-over takes no lock: the worker sets ``_idle`` and only then looks at the queue; a put
        appends and only then looks at ``_idle``. Under the GIL (CPython's default build; not a free-threaded
        one) these steps happen in one order, so either the worker sees the span, or the put sees ``_idle``
        (or another put cleared it and woke the worker) and wakes it."""
        if quiet and not self._queue and not self._log.trouble:  # (in trouble, timed wake-ups pace its summaries)
            self._idle = True
            if not self._queue:
                self._wake.wait(IDLE_BACKSTOP)
            self._idle = False
            self._wake.clear()
            if not self._queue or self._stopping or self._flush_waiters or len(self._queue) >= self._max_batch:
                return
        self._wake.wait(self._delay)
        self._wake.clear()

    def _slice_size(self) -> int:
        """How many spans the next slice takes: what fits ``slice_budget`` at the measured cost."""
        cost = self._span_cost
        if cost is None:
            return min(_FIRST_SLICE, self._max_batch)
        return max(1, min(self._max_batch, int(self._budget / cost) if cost > 0 else self._max_batch))

    def _drain(self, stopping: bool) -> None:
        """Exports the spans queued when it starts, a slice at a time (later ones wait for the next round,
        so a flush returns even while calls keep ending spans); once stopping, the whole queue, unless a
        slice fails: the rest is then dropped."""
        queue = self._queue
        left = len(queue)
        while left > 0 or (stopping and queue):
            n = min(len(queue), self._slice_size())
            if not stopping:
                n = min(n, left)
            batch = [queue.popleft() for _ in range(n)]
            if not batch:
                return
            left -= n
            started = self._cpu_clock()
            ok = self._export(batch)
            held = getattr(self.exporter, "held", None)
            cost = (self._cpu_clock() - started if held is None else held) / n
            previous = self._span_cost
            self._span_cost = cost if previous is None else previous + (cost - previous) / 4
            del batch  # short-lived spans: nothing holds them once exported
            stopping = stopping or self._stopping  # (a close while a slow exporter works through a backlog)
            if stopping and not ok:
                with self._lock:
                    self.dropped += len(queue)
                    queue.clear()
                return
            if left > 0 or (stopping and queue):
                time.sleep(SLICE_GAP)

    def _export(self, batch: list[FastSpan]) -> bool:
        try:
            result = self.exporter.export(batch)
            error = None if result is SpanExportResult.SUCCESS else getattr(self.exporter, "error", None) or "refused"
        except Exception as e:
            error = type(e).__name__  # (the class only: a message could carry a secret)
        ok = error is None
        # a failed export may have written some spans whole first (JsonlExporter.landed: a disk that filled)
        landed = len(batch) if ok else min(len(batch), max(0, int(getattr(self.exporter, "landed", 0) or 0)))
        self.exported += landed
        self.export_failures += len(batch) - landed
        self._last_ok = ok
        self._report(Seen(ok, len(batch) - landed, error, self.dropped))
        return ok

    def _report(self, seen: Seen) -> None:
        if not self._log.trouble and seen.ok is not False and seen.dropped == self._log.seen_dropped:
            return  # (all is well: the usual case, decided without a call)
        self._log, line = next_line(self._log, seen, self._clock(), name=self.name, where=self.where,
                                    interval=self._log_interval)
        if line is not None:
            log.warning("audit %s", line)
