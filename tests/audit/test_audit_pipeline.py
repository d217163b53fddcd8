"""Issue 15: each exporter has its own queue, so a silent OTLP collector costs the JSONL log nothing; the
required exporter alone decides whether calls fail closed; the counts are per exporter, in Prometheus too.

The collectors are real OTLP/gRPC servers on port 0: a silent one takes every Export call and never
answers it, a live one answers at once.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.trace import SpanKind
from prometheus_client import generate_latest
from support import TD, EchoAgent, identity_dir, new_ca, raw_channel, task

from agentmesh.audit import AuditSink, build_audit, make_exporters
from agentmesh.audit.otlp import SDK_LOGGER
from agentmesh.audit.prom import member_registry
from agentmesh.config import AuditConfig
from agentmesh.interceptors.audit import AuditStage
from agentmesh.interceptors.base import ServerChain
from agentmesh.interceptors.identity import PeerIdentityCache, PeerIdentityStage
from agentmesh.runtime.credentials import AgentIdentity
from agentmesh.runtime.server import MeshServer
from agentmesh.v1 import agent_pb2_grpc

trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
trace_grpc = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc")
pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")

METHOD = "/agentmesh.v1.Agent/Invoke"
RATE = 300  # spans per second under load


class Collector(trace_grpc.TraceServiceServicer):  # type: ignore[misc,name-defined]
    """An OTLP/gRPC trace collector. ``silent``: accepts each Export call and never answers it (the
    handler waits until the caller gives up, or the test ends); otherwise answers at once."""

    def __init__(self, silent: bool) -> None:
        self.silent = silent
        self.calls = 0
        self.spans = 0
        self.release = threading.Event()
        self._lock = threading.Lock()

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            self.calls += 1
        if self.silent:
            while context.is_active() and not self.release.wait(0.05):
                pass
        else:
            with self._lock:
                self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service.ExportTraceServiceResponse()


def _collector(silent: bool) -> Iterator[tuple[Collector, str]]:
    collector = Collector(silent)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    trace_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield collector, f"http://127.0.0.1:{port}"
    finally:
        collector.release.set()
        server.stop(0)


@pytest.fixture
def silent_collector() -> Iterator[tuple[Collector, str]]:
    yield from _collector(silent=True)


@pytest.fixture
def live_collector() -> Iterator[tuple[Collector, str]]:
    yield from _collector(silent=False)


def _end_span(sink: AuditSink, i: int) -> None:
    sink.tracer.start_span(METHOD, kind=SpanKind.SERVER, attributes={
        "rpc.system": "grpc", "agentmesh.agent": "ingestor", "agentmesh.decision": "allow", "i": i}).end()


@pytest.mark.parametrize("seconds", [pytest.param(4.0, id="4s"), pytest.param(60.0, id="60s", marks=pytest.mark.slow)])
def test_a_silent_collector_under_load_costs_the_jsonl_log_nothing(
    tmp_path: Path, silent_collector: tuple[Collector, str], caplog: pytest.LogCaptureFixture, seconds: float,
) -> None:
    collector, endpoint = silent_collector
    path = tmp_path / "audit.jsonl"
    cfg = AuditConfig(exporters=("jsonl", "otlp"), jsonl_path=path, otlp_endpoint=endpoint, otlp_timeout=1.0,
                      queue_size=256, required=True, required_exporter="jsonl")
    caplog.set_level(logging.DEBUG)
    sink = build_audit(cfg, service_name="ingestor")
    ended = refused = 0
    try:
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:  # RATE spans/s, paced in 10 ms steps
            while ended < elapsed * RATE:
                _end_span(sink, ended)
                ended += 1
            refused += not sink.available()  # what AuditStage asks before every call
            time.sleep(0.01)
        assert sink.force_flush(10, exporters=["jsonl"])
        lines = path.read_bytes().splitlines()
        stats = sink.stats["exporters"]
    finally:
        assert sink.shutdown(5)  # (the OTLP worker gives up on what is queued after one more failed slice)
    otlp = sink.stats["exporters"]["otlp"]
    print(f"\nsilent collector, {seconds:g} s: {ended} spans ended, {len(lines)} JSONL lines, otlp {otlp}, "
          f"{collector.calls} Export calls reached the collector")

    assert ended >= RATE * seconds * 0.95
    assert len(lines) == ended
    assert sorted(json.loads(line)["attributes"]["i"] for line in lines) == list(range(ended))
    assert stats["jsonl"] == {"dropped": 0, "export_failures": 0, "exported": ended}
    assert refused == 0  # the required exporter is the JSONL log: calls were never refused
    assert collector.calls >= 1  # the OTLP exports did reach the collector, which never answered
    assert otlp["exported"] == 0 and otlp["export_failures"] >= 1 and otlp["dropped"] > 0
    assert otlp["dropped"] + otlp["export_failures"] == ended  # every span accounted for
    # logged once (a summary at most once a minute), and none of the SDK exporter's per-attempt lines
    mine = [r.getMessage() for r in caplog.records if r.name.startswith("agentmesh.audit")]
    first = [m for m in mine if "failing" in m]
    assert len(first) == 1, mine
    assert re.fullmatch(rf"audit otlp exporter \({re.escape(endpoint)}\) failing: DEADLINE_EXCEEDED \(\d+ spans not "
                        r"exported(, \d+ dropped)?\); a summary at most every 60 s until it recovers", first[0])
    summaries = [m for m in mine if m.startswith("audit otlp exporter: ")]
    assert len(summaries) <= (0 if seconds < 60 else 1)
    assert len(mine) == 1 + len(summaries), mine
    assert not [r for r in caplog.records if r.name == SDK_LOGGER]


def _serve(tmp_path: Path, sink: AuditSink) -> tuple[MeshServer, Any]:
    ca = new_ca(tmp_path)
    server = MeshServer(AgentIdentity(identity_dir(ca, tmp_path, "b"), TD),
                        interceptors=[ServerChain(AuditStage("b", sink, required=True),
                                                  [PeerIdentityStage(PeerIdentityCache(TD))])])
    server.add(agent_pb2_grpc.add_AgentServicer_to_server, EchoAgent("b"), "agentmesh.v1.Agent")
    return server, ca


@pytest.mark.parametrize(("jsonl", "collector", "required", "refused"), [
    ("file", "silent", "jsonl", False),  # the OTLP collector is dead, the JSONL log is fine and required
    ("file", "silent", "otlp", True),
    ("/dev/full", "live", "jsonl", True),  # the disk is full: the JSONL log cannot be written
    ("/dev/full", "live", "otlp", False),
])
async def test_calls_fail_closed_only_when_the_required_exporter_is_down(
    tmp_path: Path, request: pytest.FixtureRequest, jsonl: str, collector: str, required: str, refused: bool,
) -> None:
    _, endpoint = request.getfixturevalue(f"{collector}_collector")
    path = tmp_path / "audit.jsonl" if jsonl == "file" else Path(jsonl)
    cfg = AuditConfig(exporters=("jsonl", "otlp"), jsonl_path=path, otlp_endpoint=endpoint, otlp_timeout=0.5,
                      required=True, required_exporter=required)
    sink = build_audit(cfg, service_name="b")
    server, ca = _serve(tmp_path, sink)
    port = await server.start()
    ch = raw_channel(f"127.0.0.1:{port}", "b", bundle=ca.bundle, cert_dir=identity_dir(ca, tmp_path, "a"))
    try:
        stub = agent_pb2_grpc.AgentStub(ch)
        await stub.Invoke(task(), timeout=5)  # no exporter has failed yet
        broken = "otlp" if collector == "silent" else "jsonl"
        sink.force_flush(5, exporters=[broken])  # its export of that call's span fails
        assert sink.stats["exporters"][broken]["export_failures"] >= 1
        assert sink.available() is not refused
        if refused:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Invoke(task(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"audit sink unavailable ({required})" in (err.value.details() or "")
        else:
            for _ in range(3):
                await stub.Invoke(task(), timeout=5)
    finally:
        await ch.close()
        await server.stop(0)
        sink.shutdown(3)
    if jsonl == "file":
        records = [json.loads(line) for line in path.read_bytes().splitlines()]
        assert [r["status"] for r in records] == (["OK", "ERROR"] if refused else ["OK"] * 4)  # refusals audited too
        if refused:  # a refusal by the mesh (audit.required): decision deny, at the audit stage
            assert records[1]["attributes"]["agentmesh.decision"] == "deny"
            assert [e["attributes"]["stage"] for e in records[1]["events"] if e["name"] == "agentmesh.denied"] \
                == ["audit"]


def test_the_prometheus_family_counts_spans_per_exporter(tmp_path: Path, make_sink, broken) -> None:
    from agentmesh.audit.exporters import JsonlExporter

    sink = make_sink("ingestor", [JsonlExporter(tmp_path / "audit.jsonl"), broken])
    for i in range(3):
        _end_span(sink, i)
    assert sink.force_flush(5)
    text = generate_latest(member_registry(sink.metrics, lambda: sink.stats)).decode()
    series = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("agentmesh_audit_spans_total{")}
    assert series == {
        'agentmesh_audit_spans_total{exporter="jsonl",member="ingestor",outcome="dropped"}': 0.0,
        'agentmesh_audit_spans_total{exporter="jsonl",member="ingestor",outcome="export_failures"}': 0.0,
        'agentmesh_audit_spans_total{exporter="jsonl",member="ingestor",outcome="exported"}': 3.0,
        'agentmesh_audit_spans_total{exporter="recordingexporter",member="ingestor",outcome="dropped"}': 0.0,
        'agentmesh_audit_spans_total{exporter="recordingexporter",member="ingestor",outcome="export_failures"}': 3.0,
        'agentmesh_audit_spans_total{exporter="recordingexporter",member="ingestor",outcome="exported"}': 0.0,
    }


def test_the_otlp_exporter_keeps_each_failures_status_and_keeps_the_sdk_lines_out(
    silent_collector: tuple[Collector, str], caplog: pytest.LogCaptureFixture,
) -> None:
    from opentelemetry.sdk.trace.export import SpanExportResult

    from agentmesh.audit.fastspan import FastTracer
    from agentmesh.audit.otlp import RedactingExporter

    _, endpoint = silent_collector
    (exporter,) = make_exporters(AuditConfig(exporters=("otlp",), otlp_endpoint=endpoint, otlp_timeout=0.3))
    assert isinstance(exporter, RedactingExporter) and exporter.where == endpoint
    span = FastTracer("ingestor").start_span(METHOD, kind=SpanKind.SERVER)
    span.end()
    caplog.set_level(logging.DEBUG)
    try:
        for _ in range(3):  # (the SDK's own filter hides a line repeated within 20 s: ours comes first)
            assert exporter.export([span]) is SpanExportResult.FAILURE
            assert exporter.error == "DEADLINE_EXCEEDED"
    finally:
        exporter.shutdown()
    assert not [r for r in caplog.records if r.name == SDK_LOGGER]
    logging.getLogger(SDK_LOGGER).warning("not from an export")  # the SDK's lines outside ours still pass
    assert [r.getMessage() for r in caplog.records if r.name == SDK_LOGGER] == ["not from an export"]
