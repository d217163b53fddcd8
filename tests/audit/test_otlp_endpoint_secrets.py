"""No secret of an OTLP endpoint reaches a log line or an error message.

``metrics.otlp_endpoint`` and ``audit.otlp_endpoint`` refuse user info (a user name or a password), a query
and a fragment, in one line that quotes the endpoint as scheme://host:port only; and a failing metrics push
logs what the span exporters log (failurelog.py: once, a summary per interval, the recovery) with that safe
endpoint, never the OpenTelemetry library's own line per attempt (its endpoint and the gRPC error details),
against a real OTLP/gRPC receiver."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.resources import Resource
from otlpkit import otlp_receiver

from agentmesh.audit.metrics import AuditMetrics
from agentmesh.audit.otlpmetrics import OtlpMetrics
from agentmesh.audit.prom import member_registry
from agentmesh.config import AuditConfig, MetricsConfig, safe_endpoint
from agentmesh.configfile import parse_config
from agentmesh.errors import ConfigError

SECRET = "s3cretPW"


# ----------------------------------------------------------------------------- the endpoints, as config

GOOD = ["collector:4317", "http://127.0.0.1:4317", "https://otel.example.com:443/", "[::1]:4317"]
USER = "must not carry a user name or password (a collector's credentials go in OTEL_EXPORTER_OTLP_HEADERS)"
QUERY = "must not carry a query or fragment"
FORM = "expected host:port, http://host:port (plaintext) or https://host:port"
REFUSED = [
    (f"http://:{SECRET}@127.0.0.1:4317", USER, "http://127.0.0.1:4317"),
    (f"http://user:{SECRET}@127.0.0.1:4317", USER, "http://127.0.0.1:4317"),
    (f"{SECRET}@collector:4317", USER, "collector:4317"),
    (f"https://collector:4317/?token={SECRET}", QUERY, "https://collector:4317"),
    (f"127.0.0.1:4317?token={SECRET}", QUERY, "127.0.0.1:4317"),
    (f"http://collector:4317#{SECRET}", QUERY, "http://collector:4317"),
    (f"http://collector:4317/v1/{SECRET}", FORM, "http://collector:4317"),
    (f"collector:{SECRET}", FORM, "collector:?"),
]


@pytest.mark.parametrize("key", ["metrics", "audit"])
def test_an_endpoint_with_credentials_a_query_or_a_fragment_is_refused_without_echoing_them(key: str) -> None:
    def make(endpoint: str) -> str | None:
        if key == "metrics":
            return MetricsConfig(otlp_endpoint=endpoint).otlp_endpoint
        return AuditConfig(exporters=("jsonl", "otlp"), otlp_endpoint=endpoint).otlp_endpoint

    for endpoint in GOOD:  # the same endpoints without a secret: accepted
        assert make(endpoint) == endpoint
    for endpoint, reason, shown in REFUSED:
        with pytest.raises(ConfigError) as e:
            make(endpoint)
        assert e.value.message == f"{key}.otlp_endpoint: {reason}, got {shown!r} (shown as scheme://host:port only)"
        assert SECRET not in e.value.message and "\n" not in e.value.message


def test_a_config_file_gets_the_same_one_line_refusal() -> None:
    base: dict[str, Any] = {"trust_domain": "example.org"}
    parse_config({**base, "metrics": {"otlp_endpoint": "http://127.0.0.1:4317"},
                  "audit": {"exporters": ["otlp"], "otlp_endpoint": "http://127.0.0.1:4317"}}, Path("/tmp"))
    for section in ("metrics", "audit"):
        with pytest.raises(ConfigError) as e:
            parse_config({**base, section: {"otlp_endpoint": f"http://alice:{SECRET}@127.0.0.1:4317"}}, Path("/tmp"))
        assert e.value.message.startswith(f"{section}.otlp_endpoint: must not carry a user name or password")
        assert SECRET not in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- a failing metrics push

def _otlp() -> Any:
    return pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", reason=(
        "opentelemetry-exporter-otlp-proto-grpc not installed (pip install 'agentmesh[otlp]')"))


class Collector:
    """An OTLP collector's MetricsService that refuses every push (with details that must never be logged)
    while ``refuse`` is set."""

    def __init__(self) -> None:
        self.refuse = True
        self.accepted = 0

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

        if self.refuse:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"bad api key {SECRET}")
        self.accepted += 1
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[Collector, str]]:
    _otlp()
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc

    c = Collector()
    with otlp_receiver(metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server, c) as endpoint:
        yield c, endpoint


def _push(endpoint: str, now: list[float]) -> OtlpMetrics:
    metrics = AuditMetrics("alpha")
    metrics.overflow = 7  # (one series to push, without a call)
    return OtlpMetrics(member_registry(metrics), _otlp().OTLPMetricExporter(endpoint=endpoint, timeout=2),
                       resource=Resource.create({"service.name": "alpha"}), started=time.time(), interval=3600,
                       where=safe_endpoint(endpoint), clock=lambda: now[0], log_interval=60.0)


def test_a_failing_push_is_logged_once_then_summarized_then_its_recovery(
        collector: tuple[Collector, str], caplog: pytest.LogCaptureFixture) -> None:
    c, endpoint = collector
    now = [1000.0]
    caplog.set_level(logging.DEBUG)
    push = _push(endpoint, now)
    try:
        def push_at(t: float) -> list[str]:
            now[0] = t
            caplog.clear()
            push.force_flush()
            return [f"{r.name}: {r.getMessage()}" for r in caplog.records]

        (first,) = push_at(1000.0)
        match = re.fullmatch(rf"agentmesh\.metrics: metrics otlp exporter \({re.escape(endpoint)}\) failing: "
                             r"PERMISSION_DENIED \((\d+) series not exported\); a summary at most every 60 s until "
                             r"it recovers", first)  # (not the library's line, nor the details it got)
        assert match, first
        series = int(match[1])
        assert series >= 1
        assert push_at(1030.0) == []
        assert push_at(1060.0) == [f"agentmesh.metrics: metrics otlp exporter: {2 * series} series failed / 0 "
                                   "dropped in the last 60 s"]
        c.refuse = False
        assert push_at(1070.0) == [f"agentmesh.metrics: metrics otlp exporter ({endpoint}) recovered: 0 series "
                                   "failed / 0 dropped since the last line"]
        assert push_at(1080.0) == [] and c.accepted == 2  # all is well: nothing logged
    finally:
        push.close()


def test_a_push_to_an_endpoint_holding_a_password_never_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    """The config refuses such an endpoint; were one to reach the exporter all the same, the library's lines
    (which name it, and the resolver's error about it) are still kept out."""
    caplog.set_level(logging.DEBUG)
    push = _push(f"http://:{SECRET}@127.0.0.1:1", [0.0])
    try:
        assert push.force_flush() is False
    finally:
        push.close()
    lines = [r.getMessage() for r in caplog.records]
    assert not [line for line in lines if SECRET in line], lines
    assert [line for line in lines if line.startswith("metrics otlp exporter (http://127.0.0.1:1) failing: ")]
