"""Call metrics: counters by decision, a latency histogram, and a small hot-path cost."""

from __future__ import annotations

from agentmesh.audit import AuditMetrics


def test_calls_are_counted_by_decision_and_status(make_sink):
    metrics = make_sink("ingestor").metrics
    metrics.record_call("allow", "OK", 0.010)
    metrics.record_call("allow", "OK", 0.020)
    metrics.record_call("deny", "PERMISSION_DENIED", 0.001)
    metrics.record_call("ratelimited", "RESOURCE_EXHAUSTED", 0.001)
    snap = metrics.snapshot()
    allow = (("decision", "allow"), ("status", "OK"))
    limited = (("decision", "ratelimited"), ("status", "RESOURCE_EXHAUSTED"))
    assert snap["agentmesh.calls"] == {
        allow: 2.0,
        (("decision", "deny"), ("status", "PERMISSION_DENIED")): 1.0,
        limited: 1.0,
    }
    assert snap["agentmesh.call.duration"][allow] == 2.0  # histogram count
    assert snap["agentmesh.ratelimited"] == {limited: 1.0}


def test_histogram_buckets(make_sink):
    metrics = make_sink("ingestor").metrics
    for seconds in (0.0001, 0.004, 0.004, 30.0):
        metrics.record_call("allow", "OK", seconds)
    bounds, counts, total = metrics.histogram("allow", "OK")
    assert sum(counts) == 4 and counts[0] == 1 and counts[bounds.index(0.005)] == 2 and counts[-1] == 1
    assert abs(total - 30.0081) < 1e-9


def test_distinct_series_are_bounded_and_overflow_is_counted():
    metrics = AuditMetrics(max_series=3)
    for i in range(10):
        metrics.record_call("deny", f"STATUS_{i}", 0.0)
    assert len(metrics.snapshot()["agentmesh.calls"]) == 3 and metrics.dropped == 7
