"""Call counters and a latency histogram, on a MeterProvider owned by one audit sink.

Instruments (attributes ``decision`` and ``status``):

* ``agentmesh.calls`` (counter): every call the server chain finished;
* ``agentmesh.call.duration`` (histogram, seconds): their latency;
* ``agentmesh.ratelimited`` (counter): calls refused with decision ``"ratelimited"``.

Readings stay in memory (an ``InMemoryMetricReader``); :meth:`AuditMetrics.snapshot` returns
them as plain numbers, for the CLI, health endpoints and tests.

The OpenTelemetry SDK costs ~10 us per measurement, too much for every call, so
:meth:`AuditMetrics.record_call` only appends to a bounded deque (well under a microsecond); a
daemon thread moves the pending calls into the instruments every ``flush_interval`` seconds, and
:meth:`AuditMetrics.snapshot` does so before reading. Calls beyond ``max_pending`` between two
flushes are counted in ``dropped``, never waited for.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Mapping

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.resources import Resource

__all__ = ["CALLS", "DURATION", "RATELIMITED", "AuditMetrics"]

CALLS = "agentmesh.calls"
DURATION = "agentmesh.call.duration"
RATELIMITED = "agentmesh.ratelimited"
_MAX_CACHED = 256  # distinct (decision, status) attribute sets kept ready-made


class AuditMetrics:
    def __init__(self, resource: Resource, *, flush_interval: float = 1.0, max_pending: int = 65_536) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader], resource=resource, shutdown_on_exit=False)
        meter = self.provider.get_meter("agentmesh.audit")
        self._calls = meter.create_counter(CALLS, unit="{call}", description="calls handled, by decision")
        self._duration = meter.create_histogram(DURATION, unit="s", description="call latency")
        self._ratelimited = meter.create_counter(RATELIMITED, unit="{call}", description="rate-limited calls")
        self._attrs: dict[tuple[str, str], Mapping[str, str]] = {}
        self._max_pending = max_pending
        self._pending: collections.deque[tuple[str, str, float]] = collections.deque()
        self._flush_lock = threading.Lock()
        self._interval = flush_interval
        self._wake = threading.Event()
        self._stopping = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="agentmesh-metrics", daemon=True)
        self._thread.start()

    def record_call(self, decision: str, status: str, duration_s: float) -> None:
        """Counts one finished call; ``decision`` is "allow", "deny" or "ratelimited"."""
        n = len(self._pending)
        if n >= self._max_pending:
            self.dropped += 1
            return
        self._pending.append((decision, status, duration_s))
        if n == self._max_pending // 2:
            self._wake.set()  # a burst: flush now rather than at the next interval

    def flush(self) -> None:
        """Moves the pending calls into the OpenTelemetry instruments."""
        with self._flush_lock:
            pending = self._pending
            while pending:
                decision, status, duration_s = pending.popleft()
                attrs = self._attributes(decision, status)
                self._calls.add(1, attrs)
                self._duration.record(duration_s, attrs)
                if decision == "ratelimited":
                    self._ratelimited.add(1, attrs)

    def _attributes(self, decision: str, status: str) -> Mapping[str, str]:
        attrs = self._attrs.get((decision, status))
        if attrs is None:
            attrs = {"decision": decision, "status": status}
            if len(self._attrs) < _MAX_CACHED:
                self._attrs[(decision, status)] = attrs
        return attrs

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._interval)
            self._wake.clear()
            self.flush()

    def snapshot(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """{instrument: {sorted attribute items: value}}; a histogram's value is its count."""
        self.flush()
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    points = out.setdefault(metric.name, {})
                    for p in metric.data.data_points:
                        key = tuple(sorted((str(k), str(v)) for k, v in (p.attributes or {}).items()))
                        if isinstance(p, HistogramDataPoint):
                            points[key] = float(p.count)
                        elif isinstance(p, NumberDataPoint):
                            points[key] = float(p.value)
        return out

    def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(5)
        self.flush()
        self.provider.shutdown()
