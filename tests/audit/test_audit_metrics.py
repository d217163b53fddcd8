"""Call metrics: counters by decision, a latency histogram, and a small hot-path cost."""

from __future__ import annotations

import time

from opentelemetry.sdk.resources import Resource

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


def test_recording_a_call_is_cheap_and_the_sdk_work_happens_later(make_sink):
    metrics = make_sink("ingestor").metrics
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        metrics.record_call("allow", "OK", 0.001)
    per_call = (time.perf_counter() - t0) / n
    assert per_call < 10e-6, f"{per_call * 1e6:.1f} us per call"  # typically well under 1 us
    counted = metrics.snapshot()["agentmesh.calls"][(("decision", "allow"), ("status", "OK"))]
    assert counted + metrics.dropped == n


def test_a_burst_beyond_the_pending_bound_is_dropped_and_counted_not_waited_for():
    metrics = AuditMetrics(Resource.create({}), flush_interval=3600, max_pending=10)
    try:
        for _ in range(1000):
            metrics.record_call("deny", "PERMISSION_DENIED", 0.0)
        counted = metrics.snapshot()["agentmesh.calls"][(("decision", "deny"), ("status", "PERMISSION_DENIED"))]
        assert metrics.dropped > 0 and counted + metrics.dropped == 1000
    finally:
        metrics.shutdown()
