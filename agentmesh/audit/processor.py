"""The queues between ended spans and the exporters: one bounded queue and one daemon thread per exporter,
so a slow, failing or hung exporter only fills and drops from its own queue.

:meth:`QueueSpanProcessor.on_end` (the sink's tracer calls it from ``FastSpan.end``, on the call's
path) appends the span to each exporter's :class:`ExportQueue` and returns; a queue that is full
drops the span and counts it. Each queue's thread exports it in *slices*. A hung OTLP collector
stalls the OTLP thread only: the JSONL log gets every span all the same. Counts, per exporter, in spans:

* ``exported``: spans the exporter accepted;
* ``export_failures``: spans of a slice it refused or raised on;
* ``dropped``: spans that found its queue full (or stopping), and those left in it at shutdown after
  its last slice failed (not retried: the process is going).

An exporter is :meth:`~ExportQueue.healthy` unless its queue is full or its last slice failed; the
next slice it accepts makes it healthy again (``audit.required`` names the exporters that must be:
sink.py). Its trouble is logged once, then summarized at most once a minute, then its recovery
(failurelog.py decides; the OTLP library's line per failed attempt is left out: otlp.py). The queue
and its worker are exportqueue.py's :class:`ExportQueue`; this module fans spans out to them.

Why slices. Turning spans into lines (or protobuf) is Python code, and an export thread holds the
interpreter lock (GIL) while it runs: the event loop that serves calls waits for the lock until the
export thread lets go of it, which CPython forces only every 5 ms (``sys.getswitchinterval()``).
512-span batches held it for milliseconds and showed up in the p99 of every call
(``benchmarks/exportpause.py``). So each worker:

* wakes every ``schedule_delay`` seconds while spans are queued, or as soon as ``max_batch`` are, so
  spans are short-lived (one that waits half a second outlives young garbage collections and is then
  walked by full ones); once a round found nothing to export, it sleeps until a span arrives
  (exportqueue.py), so an idle member's export threads cost nothing;
* hands its exporter at most ``max_batch`` spans at a time, fewer when the exporter's measured cost
  per span says a slice would hold the lock longer than ``slice_budget`` seconds. The cost is the CPU
  time the exporter says its last export held the lock (``held``: the JSONL exporter's lines, not its
  write, which lets go of the lock), else the thread's CPU time for the whole export (time spent
  waiting on a socket or a disk does not count). It is re-measured on every slice, so the bound holds
  for a costlier exporter (OTLP) or a slower machine too. Measuring the whole export of the JSONL
  exporter also counted each slice's fixed cost (its ``lstat`` and ``write``, the lock taken back
  after them) as a cost per span: on a busy member that shrank slices to ~2 spans, which made the
  cost per span look higher still (84 us a span, against ~25 us for its lines);
* sleeps briefly (:data:`SLICE_GAP`) between slices while more are queued, so a thread waiting for
  the lock (the event loop) takes it at once rather than after the switch interval.

Small slices cost CPU: at 1000 spans/s on a 2-vCPU test machine, 0.2 ms slices (about 5 JSONL spans)
made the export ~30 us per span instead of ~20 us in 512-span batches, and took the event loop's
added p99 from +3.2 ms to +0.19 ms. With several exporters, each worker's slices are bounded alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence

from agentmesh.audit.exportqueue import SLICE_GAP, ExportQueue, SpanRecordExporter, exporter_names
from agentmesh.audit.fastspan import FastSpan

__all__ = ["SLICE_GAP", "ExportQueue", "QueueSpanProcessor", "SpanRecordExporter"]


class QueueSpanProcessor:
    """Hands each ended span (:meth:`on_end`) to one :class:`ExportQueue` per exporter.

    ``max_batch``: most spans in one export call, and how many queued spans wake a worker before
    ``schedule_delay`` (seconds) has passed. ``slice_budget``: the CPU time, in seconds, one slice
    aims to stay within (a slice holds at least one span, so a single span slower than the budget is
    still exported), measured with ``cpu_clock`` (seconds; the export thread's CPU time).
    ``queue_size`` bounds each exporter's queue. ``clock`` (monotonic seconds) and ``log_interval``
    pace the failure summaries. An exporter's name (its ``name`` attribute, else its class's) labels
    its counts and its thread.
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
        clock: Callable[[], float] = time.monotonic,
        log_interval: float = 60.0,
    ) -> None:
        if queue_size < 1 or max_batch < 1:
            raise ValueError("queue_size and max_batch must be >= 1")
        if schedule_delay <= 0 or slice_budget <= 0 or log_interval <= 0:
            raise ValueError("schedule_delay, slice_budget and log_interval must be > 0")
        self.queues: dict[str, ExportQueue] = {}
        for label, exporter in zip(exporter_names(exporters), exporters, strict=True):
            self.queues[label] = ExportQueue(
                exporter, label, queue_size=queue_size, max_batch=max_batch, schedule_delay=schedule_delay,
                slice_budget=slice_budget, thread_name=f"{name}-{label}", cpu_clock=cpu_clock, clock=clock,
                log_interval=log_interval)
        self._puts = tuple(q.put for q in self.queues.values())
        if len(self._puts) == 1:
            self.on_end = self._puts[0]  # type: ignore[method-assign]  # (one exporter: no loop on the call path)

    # -- the hot path ---------------------------------------------------------------------------

    def on_end(self, span: FastSpan) -> None:
        for put in self._puts:
            put(span)

    # -- state ----------------------------------------------------------------------------------

    def healthy(self, names: Collection[str] | None = None) -> bool:
        """Whether the exporters ``names`` (None: all) are healthy (see the module docstring)."""
        if names is None:
            return all(q.healthy() for q in self.queues.values())
        return all(self.queues[n].healthy() for n in names)

    @property
    def stats(self) -> dict[str, int]:
        """``dropped``, ``export_failures`` and ``exported``, summed over the exporters."""
        out = {"dropped": 0, "export_failures": 0, "exported": 0}
        for q in self.queues.values():
            for k, v in q.stats.items():
                out[k] += v
        return out

    @property
    def stats_by_exporter(self) -> dict[str, dict[str, int]]:
        """The same counts, per exporter name."""
        return {name: q.stats for name, q in self.queues.items()}

    # -- flushing -------------------------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 30_000, names: Collection[str] | None = None) -> bool:
        """Waits until everything queued so far has been handed to the exporters ``names`` (None: all)."""
        deadline = time.monotonic() + timeout_millis / 1000
        queues = [q for n, q in self.queues.items() if names is None or n in names]
        waits = [q.flush_request() for q in queues]
        return all(w.wait(max(0.0, deadline - time.monotonic())) for w in waits)

    def shutdown(self) -> None:
        self.close()

    def close(self, timeout: float = 5.0) -> bool:
        """Stops accepting spans, exports what is queued and closes the exporters, all within ``timeout``.

        Returns False when a worker did not finish in time (a hung exporter); that exporter is then
        left open, since its worker may still be inside it.
        """
        deadline = time.monotonic() + timeout
        for q in self.queues.values():
            q.stop()
        done = [q.join(max(0.0, deadline - time.monotonic())) for q in self.queues.values()]
        return all(done)
