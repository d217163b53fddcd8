"""The sink end to end: spans written to a real JSONL file carry the agreed attributes and shape."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from opentelemetry.trace import SpanKind, Status, StatusCode

from agentmesh.audit import AuditSink, build_audit, extract, inject, record_denial, record_guard, rpc_attributes
from agentmesh.audit import attributes as A
from agentmesh.audit.spans import STATUS_ATTRIBUTES, rpc_span_name
from agentmesh.config import AuditConfig
from agentmesh.errors import ConfigError

METHOD = "/agentmesh.v1.Agent/Invoke"
ROOT = str(Path(__file__).resolve().parents[2])


def _jsonl_sink(tmp_path: Path, service: str = "ingestor") -> tuple[AuditSink, Path]:
    path = tmp_path / "logs" / "audit.jsonl"
    return build_audit(AuditConfig(exporters=("jsonl",), jsonl_path=path), service_name=service), path


def test_server_and_client_spans_reach_the_jsonl_file_with_their_attributes(tmp_path, read_jsonl):
    sink, path = _jsonl_sink(tmp_path)
    try:
        with sink.tracer.start_as_current_span(rpc_span_name(METHOD), kind=SpanKind.SERVER) as server:
            server.set_attributes({
                **rpc_attributes(METHOD),
                A.AGENT: "ingestor",
                A.PEER_SPIFFE_ID: "spiffe://example.org/agent/bridge",
                A.ENDUSER_ID: "alice",
                A.ROLES: ["client", "admin"],
                A.DECISION: "allow",
                A.RULE: "client-starts-workflow",
                A.DELEGATION_CHAIN: ["spiffe://example.org/agent/bridge"],
                A.RATELIMIT_REMAINING: 9,
                **STATUS_ATTRIBUTES[grpc.StatusCode.OK],
            })
            record_guard(server, "flag", "email-address")
            with sink.tracer.start_as_current_span(rpc_span_name(METHOD), kind=SpanKind.CLIENT) as client:
                client.set_attributes({A.AGENT: "ingestor", A.TARGET: "summarizer"})
                record_denial(client, "policy", "no rule allows ingestor -> summarizer")
                client.set_status(Status(StatusCode.ERROR))
        assert sink.force_flush(5)
        assert sink.stats == {"dropped": 0, "export_failures": 0, "exported": 2,
                              "exporters": {"jsonl": {"dropped": 0, "export_failures": 0, "exported": 2}}}
    finally:
        sink.shutdown(5)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    client_rec, server_rec = read_jsonl(path)  # children end first
    assert set(server_rec) == {
        "trace_id", "span_id", "parent_span_id", "name", "kind", "start", "end", "duration_ms",
        "service", "status", "attributes", "events",
    }
    assert len(server_rec["trace_id"]) == 32 and len(server_rec["span_id"]) == 16
    assert server_rec["parent_span_id"] is None
    assert client_rec["trace_id"] == server_rec["trace_id"]
    assert client_rec["parent_span_id"] == server_rec["span_id"]
    assert (server_rec["kind"], client_rec["kind"]) == ("server", "client")
    assert (server_rec["status"], client_rec["status"]) == ("OK", "ERROR")
    assert server_rec["service"] == "ingestor" and server_rec["name"] == "agentmesh.v1.Agent/Invoke"
    assert server_rec["end"] >= server_rec["start"] > 1.6e9
    assert server_rec["duration_ms"] == pytest.approx((server_rec["end"] - server_rec["start"]) * 1000, abs=0.01)
    attrs = server_rec["attributes"]
    assert attrs == {
        "rpc.system.name": "grpc",
        "rpc.method": "agentmesh.v1.Agent/Invoke",
        "rpc.response.status_code": "OK",
        "agentmesh.agent": "ingestor",
        "agentmesh.peer.spiffe_id": "spiffe://example.org/agent/bridge",
        "enduser.id": "alice",
        "agentmesh.roles": ["client", "admin"],
        "agentmesh.decision": "allow",
        "agentmesh.rule": "client-starts-workflow",
        "agentmesh.delegation.chain": ["spiffe://example.org/agent/bridge"],
        "agentmesh.ratelimit.remaining": 9,
    }
    assert server_rec["events"][0]["name"] == "agentmesh.guard"
    assert server_rec["events"][0]["attributes"] == {"action": "flag", "pattern": "email-address"}
    denied = client_rec["events"][0]
    assert denied["name"] == "agentmesh.denied" and denied["time"] >= client_rec["start"]
    assert denied["attributes"] == {"stage": "policy", "reason": "no rule allows ingestor -> summarizer"}
    assert client_rec["attributes"] == {"agentmesh.agent": "ingestor", "agentmesh.target": "summarizer"}


def test_an_unsampled_traceparent_cannot_switch_auditing_off(tmp_path, read_jsonl):
    sink, path = _jsonl_sink(tmp_path)
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"  # sampled flag off
    try:
        with sink.tracer.start_as_current_span(METHOD, context=extract([("traceparent", parent)])):
            pass
        assert sink.force_flush(5)
    finally:
        sink.shutdown(5)
    (rec,) = read_jsonl(path)
    assert rec["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert rec["parent_span_id"] == "00f067aa0ba902b7"


def test_agents_in_one_process_keep_their_own_service_name(tmp_path, read_jsonl):
    a, path = _jsonl_sink(tmp_path, "ingestor")
    b, _ = _jsonl_sink(tmp_path, "summarizer")
    try:
        with a.tracer.start_as_current_span("a-call", kind=SpanKind.CLIENT):
            md: list[tuple[str, str]] = []
            inject(md)
        with b.tracer.start_as_current_span("b-serve", context=extract(md), kind=SpanKind.SERVER):
            pass
        assert a.force_flush(5) and b.force_flush(5)
    finally:
        a.shutdown(5)
        b.shutdown(5)
    by_name = {r["name"]: r for r in read_jsonl(path)}
    assert by_name["a-call"]["service"] == "ingestor"
    assert by_name["b-serve"]["service"] == "summarizer"
    assert by_name["b-serve"]["parent_span_id"] == by_name["a-call"]["span_id"]


def test_console_exporter_prints_one_json_line_per_span_on_stderr(capsys):
    sink = build_audit(AuditConfig(exporters=("console",)), service_name="validator")
    try:
        for name in ("one", "two"):
            with sink.tracer.start_as_current_span(name):
                pass
        assert sink.force_flush(5)
    finally:
        sink.shutdown(5)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["one", "two"]
    assert all(json.loads(line)["service"] == "validator" for line in lines)


def test_none_exporter_still_traces_but_queues_nothing():
    sink = build_audit(AuditConfig(exporters=("none",)), service_name="ingestor")
    with sink.tracer.start_as_current_span("x") as span:
        assert span.get_span_context().is_valid
    assert sink.available() and sink.force_flush(1)
    assert sink.stats == {"dropped": 0, "export_failures": 0, "exported": 0, "exporters": {}}
    assert sink.shutdown(1)


def test_an_unusable_jsonl_path_is_a_config_error_at_build_time(tmp_path):
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(ConfigError, match=r"audit\.jsonl_path: cannot open"):
        build_audit(AuditConfig(exporters=("jsonl",), jsonl_path=tmp_path / "dir.jsonl"), service_name="a")
    with pytest.raises(ConfigError, match=r"audit\.jsonl_path: required"):
        build_audit(AuditConfig(exporters=("jsonl",)), service_name="a")


def test_several_processes_append_whole_lines_to_one_log(tmp_path):
    """Lines far larger than PIPE_BUF, from two processes at once, never interleave."""
    path = tmp_path / "shared.jsonl"
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from agentmesh.audit import build_audit\n"
        "from agentmesh.config import AuditConfig\n"
        "sink = build_audit(AuditConfig(jsonl_path=Path(sys.argv[1])), service_name=sys.argv[2])\n"
        "for i in range(200):\n"
        "    with sink.tracer.start_as_current_span('s') as span:\n"
        "        span.set_attribute('filler', sys.argv[2] * 20000)\n"
        "assert sink.shutdown(30)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path), name], env={**os.environ, "PYTHONPATH": ROOT})
        for name in ("a", "b")
    ]
    assert [p.wait(60) for p in procs] == [0, 0]
    services = [json.loads(line)["service"] for line in path.read_bytes().splitlines()]
    assert sorted(services) == ["a"] * 200 + ["b"] * 200
