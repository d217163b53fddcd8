"""What recording a member's golden metrics costs per call (docs/OBSERVABILITY.md, "Cost per call").

* ``AuditMetrics.record_server`` (each call served) and ``AuditMetrics.record_client`` (each call made), timed
  alone on the arguments of a real call captured from each in-process chain (``chainbench.py``): the
  steady state, its series already known;
* each whole chain with its metrics and without (the member's ``AuditMetrics`` swapped for one that records
  nothing), in interleaved rounds (with, without, without, with, ...) so that drift and other jobs hit both
  alike; medians, their difference and ratio.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from agentmesh.audit.fastspan import FastSpan
from agentmesh.audit.metrics import AuditMetrics
from agentmesh.audit.sink import AuditSink
from agentmesh.context import CallContext

__all__ = ["measure_metrics_cost"]

ROUNDS = 8  # of each, interleaved


class _Off(AuditMetrics):
    """Records nothing: the chain without metrics."""

    def record_server(self, call: CallContext, code: grpc.StatusCode, seconds: float, *, registered: bool,
                      span: FastSpan | None = None) -> None:
        return None

    def record_client(self, span: FastSpan) -> None:
        return None


class _Capture(_Off):
    """Keeps the arguments of the last record (to time the real one on them)."""

    made_server: tuple[Any, ...] | None = None
    made_client: FastSpan | None = None

    def record_server(self, call: CallContext, code: grpc.StatusCode, seconds: float, *, registered: bool,
                      span: FastSpan | None = None) -> None:
        self.made_server = (call, code, seconds, registered, span)

    def record_client(self, span: FastSpan) -> None:
        self.made_client = span


def _us_per_call(fn: Callable[[], object], n: int) -> float:
    """Median over 5 batches of ``n`` calls, microseconds per call."""
    walls = []
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        walls.append((time.perf_counter_ns() - t0) / n / 1e3)
    return statistics.median(walls)


async def _batch_us(call: Callable[[], Awaitable[object]], n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        await call()
    await asyncio.sleep(0)  # ends the client spans the done callbacks scheduled
    return (time.perf_counter_ns() - t0) / n / 1e3


async def _with_and_without(call: Callable[[], Awaitable[object]], sink: AuditSink, n: int,
                            flush: Callable[[], object]) -> dict[str, float]:
    real, off = sink.metrics, _Off(sink.metrics.member)
    timed: dict[bool, list[float]] = {True: [], False: []}
    try:
        for i in range(ROUNDS):
            for on in (True, False) if i % 2 == 0 else (False, True):
                sink.metrics = real if on else off
                timed[on].append(await _batch_us(call, n))
                flush()
    finally:
        sink.metrics = real
    with_, without = statistics.median(timed[True]), statistics.median(timed[False])
    return {"with_us": with_, "without_us": without, "added_us": with_ - without,
            "ratio": with_ / without if without > 0 else float("nan")}


async def measure_metrics_cost(served: Callable[[], Awaitable[object]], called: Callable[[], Awaitable[object]],
                               server: AuditSink, client: AuditSink, n: int) -> dict[str, Any]:
    """The costs above; ``served`` / ``called`` make one call through the server / client chain of the
    members whose sinks are ``server`` / ``client``; ``n``: calls per timed batch."""
    real_server, real_client = server.metrics, client.metrics
    capture = _Capture(real_server.member)
    server.metrics = client.metrics = capture
    try:
        await served()
        await called()
        for _ in range(100):  # the client span ends once the call's status is read
            if capture.made_client is not None:
                break
            await asyncio.sleep(0)
    finally:
        server.metrics, client.metrics = real_server, real_client
    assert capture.made_server is not None and capture.made_client is not None, "no call was recorded"
    call, code, seconds, registered, span = capture.made_server
    client_span = capture.made_client
    real_server.record_server(call, code, seconds, registered=registered, span=span)  # its series now known
    real_client.record_client(client_span)
    reps = max(1000, n * 10)
    return {
        "record_server_us": _us_per_call(
            lambda: real_server.record_server(call, code, seconds, registered=registered, span=span), reps),
        "record_client_us": _us_per_call(lambda: real_client.record_client(client_span), reps),
        "server_chain": await _with_and_without(served, server, n, lambda: server.force_flush(10)),
        "client_chain": await _with_and_without(called, client, n, lambda: client.force_flush(10)),
        "rounds": ROUNDS,
        "calls_per_round": n,
    }
