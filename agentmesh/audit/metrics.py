"""Call counters and a latency histogram of one audit sink, aggregated in place.

Series (attributes ``decision`` and ``status``):

* ``agentmesh.calls`` (counter): every call the server chain finished;
* ``agentmesh.call.duration`` (histogram, seconds, fixed buckets): their latency;
* ``agentmesh.ratelimited`` (counter): calls refused with decision ``"ratelimited"``.

Recording is a dict update and a bisect on the event loop thread (about a microsecond): the
OpenTelemetry metrics SDK costs ~10 us per measurement, too much for every call.
:meth:`AuditMetrics.snapshot` returns plain numbers for the CLI, health endpoints and tests. The
number of distinct (decision, status) series is bounded; calls beyond it are counted in ``dropped``.
"""

from __future__ import annotations

import bisect
from typing import Any

__all__ = ["BUCKETS", "CALLS", "DURATION", "RATELIMITED", "AuditMetrics"]

CALLS = "agentmesh.calls"
DURATION = "agentmesh.call.duration"
RATELIMITED = "agentmesh.ratelimited"
#: histogram bucket upper bounds, in seconds (the last bucket is unbounded)
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Series:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)


class AuditMetrics:
    def __init__(self, resource: Any = None, *, max_series: int = 256) -> None:
        self.resource = resource
        self._series: dict[tuple[str, str], _Series] = {}
        self._max_series = max_series
        self.dropped = 0

    def record_call(self, decision: str, status: str, duration_s: float) -> None:
        """Counts one finished call; ``decision`` is "allow", "deny", "ratelimited" or "none"."""
        series = self._series.get((decision, status))
        if series is None:
            if len(self._series) >= self._max_series:
                self.dropped += 1
                return
            series = self._series[(decision, status)] = _Series()
        series.count += 1
        series.sum += duration_s
        series.buckets[bisect.bisect_left(BUCKETS, duration_s)] += 1

    def flush(self) -> None:
        """Nothing is pending: calls are aggregated as they are recorded."""

    def snapshot(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """{series: {sorted attribute items: value}}; a histogram's value is its count."""
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {CALLS: {}, DURATION: {}}
        for (decision, status), s in list(self._series.items()):
            key = (("decision", decision), ("status", status))
            out[CALLS][key] = float(s.count)
            out[DURATION][key] = float(s.count)
            if decision == "ratelimited":
                out.setdefault(RATELIMITED, {})[key] = float(s.count)
        return out

    def histogram(self, decision: str, status: str) -> tuple[tuple[float, ...], list[int], float]:
        """(bucket bounds, counts per bucket incl. the unbounded last one, sum of seconds) of one series."""
        s = self._series.get((decision, status)) or _Series()
        return BUCKETS, list(s.buckets), s.sum

    def shutdown(self) -> None:
        """Nothing to stop: no thread, no exporter."""
