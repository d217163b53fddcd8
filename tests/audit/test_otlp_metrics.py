"""``metrics.otlp_endpoint``: each member pushes the series its Prometheus endpoint serves to a real OTLP/gRPC
receiver (the collector's MetricsService on a plaintext port 0 here), after real calls over mutual TLS.

Nothing waits for time to pass: a push is forced (``force_flush``) or, with a tiny interval, awaited on an
Event with a timeout."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from meshkit import running_mesh
from otlpkit import otlp_receiver
from prometheus_client import generate_latest
from support import task

from agentmesh.audit.metrics import BUCKETS, AuditMetrics
from agentmesh.audit.otlpmetrics import OtlpMetrics, otlp_metrics
from agentmesh.audit.prom import member_registry
from agentmesh.config import MetricsConfig
from agentmesh.configfile import parse_config
from agentmesh.errors import ConfigError
from agentmesh.v1 import agent_pb2_grpc

pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
                    reason="opentelemetry-exporter-otlp-proto-grpc not installed (pip install 'agentmesh[otlp]')")
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.metrics.v1 import metrics_pb2

AGENTS = {"ingestor": {"roles": ["ingestor"]}, "summarizer": {"roles": ["summarizer"]}}
POLICY = [{"name": "ingestor-to-summarizer", "action": "allow", "to": ["summarizer"], "from": ["ingestor"]}]


class Receiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    """An OTLP collector's metrics endpoint: keeps every export, by the resource's service.name."""

    def __init__(self) -> None:
        self.exports: list[tuple[str, metrics_pb2.ResourceMetrics]] = []
        self.arrived = threading.Condition()

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.arrived:
            for rm in request.resource_metrics:
                service = {a.key: a.value.string_value for a in rm.resource.attributes}["service.name"]
                self.exports.append((service, rm))
            self.arrived.notify_all()
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def of(self, member: str) -> list[metrics_pb2.ResourceMetrics]:
        with self.arrived:
            return [rm for service, rm in self.exports if service == member]

    def wait(self, member: str, count: int, timeout: float = 10.0) -> list[metrics_pb2.ResourceMetrics]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len([s for s, _ in self.exports if s == member]) >= count,
                                         timeout), f"{count} pushes of {member} within {timeout:.0f}s"
        return self.of(member)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    r = Receiver()
    with otlp_receiver(metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server, r) as endpoint:
        yield r, endpoint


def metrics_by_name(rm: metrics_pb2.ResourceMetrics) -> dict[str, metrics_pb2.Metric]:
    return {m.name: m for sm in rm.scope_metrics for m in sm.metrics}


def attrs(point: Any) -> dict[str, str]:
    return {a.key: a.value.string_value for a in point.attributes}


async def test_members_push_the_series_they_serve_to_an_otlp_collector(
        tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    r, endpoint = receiver
    sections = {"policy": POLICY, "metrics": {"otlp_endpoint": endpoint, "otlp_interval": "1h"}}
    async with running_mesh(tmp_path, AGENTS, **sections) as mesh:
        summarizer = mesh.nodes["ingestor"].stub("summarizer", agent_pb2_grpc.AgentStub)
        for _ in range(3):
            await summarizer.Invoke(task())
        with pytest.raises(grpc.aio.AioRpcError):  # refused: the policy lets no one call the ingestor
            await mesh.nodes["summarizer"].stub("ingestor", agent_pb2_grpc.AgentStub).Invoke(task())
        node = mesh.nodes["summarizer"]
        assert node.metrics_endpoint is None  # OTLP only: no Prometheus port opened
        assert node.metrics_push is not None and mesh.control.metrics_push is not None
        assert await asyncio.to_thread(node.metrics_push.force_flush)
        (pushed,) = r.of("summarizer")
        exposition = generate_latest(member_registry(node.sink.metrics, lambda: node.sink.stats)).decode()

        got = metrics_by_name(pushed)
        requests = got["agentmesh_server_requests"]
        assert requests.sum.is_monotonic and requests.sum.aggregation_temporality == \
            metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
        ((point, value),) = [(attrs(p), p.as_double) for p in requests.sum.data_points
                             if attrs(p).get("grpc_method") == "Invoke"]
        assert value == 3 and point == {"destination": "summarizer", "source": "ingestor", "principal_class": "member",
                                        "grpc_service": "agentmesh.v1.Agent", "grpc_method": "Invoke",
                                        "grpc_code": "OK", "decision": "allow"}
        latency = got["agentmesh_server_request_duration_seconds"]
        (hist,) = [p for p in latency.histogram.data_points if attrs(p).get("grpc_method") == "Invoke"]
        assert latency.unit == "s" and list(hist.explicit_bounds) == list(BUCKETS)
        assert hist.count == 3 == sum(hist.bucket_counts) and len(hist.bucket_counts) == len(BUCKETS) + 1
        assert 0 < hist.sum < 30 and hist.start_time_unix_nano == int(node.sink.metrics.started * 1e9)
        assert got["agentmesh_certificate_expiry_seconds"].gauge.data_points[0].as_double > 3600
        # the same families as the Prometheus endpoint (a counter's name without _total), this member's only
        families = {line.split()[2].removesuffix("_total") for line in exposition.splitlines()
                    if line.startswith("# TYPE") and f"\n{line.split()[2]}" in exposition}
        assert set(got) == families
        points = [(name, attrs(p)) for name, m in got.items()
                  for p in [*m.sum.data_points, *m.gauge.data_points, *m.histogram.data_points]]
        for name, p in points:  # what it made: source; what it served: destination; else: member
            mine = "source" if name.startswith("agentmesh_client_") else \
                "destination" if "destination" in p else "member"
            assert p[mine] == "summarizer", (name, p)
        assert any(p.get("source") == "summarizer" and p.get("destination") == "ingestor" for _, p in points)

        await asyncio.to_thread(mesh.control.metrics_push.force_flush)
        assert "agentmesh_server_requests" in metrics_by_name(r.of("control")[-1])
        assert r.of("ingestor") == []  # nothing pushed on its own: the interval is an hour


async def test_a_short_interval_pushes_on_its_own_and_close_pushes_the_last_counts(
        receiver: tuple[Receiver, str]) -> None:
    r, endpoint = receiver
    base = {"trust_domain": "example.org", "agents": {"a": {"address": "127.0.0.1:7101"}}}
    config = parse_config({**base, "metrics": {"otlp_endpoint": endpoint, "otlp_interval": 0.05}}, Path("/tmp"))
    metrics = AuditMetrics("a")
    push = otlp_metrics(config, metrics)
    assert isinstance(push, OtlpMetrics)
    try:
        r.wait("a", 2)  # two pushes, every 50 ms, without being asked
    finally:
        await asyncio.to_thread(push.close)

    hourly = parse_config({**base, "metrics": {"otlp_endpoint": endpoint, "otlp_interval": "1h"}}, Path("/tmp"))
    metrics = AuditMetrics("b")
    push = otlp_metrics(hourly, metrics)
    assert push is not None
    metrics.overflow = 7  # (any count: this one needs no call)
    await asyncio.to_thread(push.close)
    (last,) = r.of("b")  # pushed once, as it closed
    assert metrics_by_name(last)["agentmesh_metrics_overflow"].sum.data_points[0].as_double == 7


def test_no_endpoint_no_push_and_a_missing_exporter_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"trust_domain": "example.org", "agents": {"a": {"address": "127.0.0.1:7101"}}}
    assert otlp_metrics(parse_config(base, Path("/tmp")), AuditMetrics("a")) is None
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.metric_exporter", None)
    config = parse_config({**base, "metrics": {"otlp_endpoint": "http://127.0.0.1:4317"}}, Path("/tmp"))
    with pytest.raises(ConfigError) as e:
        otlp_metrics(config, AuditMetrics("a"))
    assert e.value.message == ("metrics.otlp_endpoint: pushing metrics over OTLP needs "
                               "opentelemetry-exporter-otlp-proto-grpc; install agentmesh[otlp]")


@pytest.mark.parametrize(("section", "message"), [
    ({"otlp_endpoint": "collector"}, "metrics.otlp_endpoint: expected host:port, http://host:port (plaintext) or "
                                     "https://host:port, got 'collector'"),
    ({"otlp_endpoint": "ftp://collector:4317"}, "metrics.otlp_endpoint: expected host:port"),
    ({"otlp_endpoint": "http://collector:4317/v1/metrics"}, "metrics.otlp_endpoint: expected host:port"),
    ({"otlp_endpoint": "collector:99999"}, "metrics.otlp_endpoint: expected host:port"),
    ({"otlp_interval": 0}, "metrics.otlp_interval: expected seconds from 0.01 to 86400, got 0.0"),
    ({"otlp_interval": "2d"}, "metrics.otlp_interval: expected seconds from 0.01 to 86400, got 172800.0"),
    ({"otlp_interval": "soon"}, "metrics.otlp_interval: expected a duration like 30s"),
    ({"otlp_endpont": "x:1"}, "metrics.otlp_endpont: unknown key (did you mean 'otlp_endpoint'?)"),
])
def test_mistakes_name_the_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"trust_domain": "example.org", "metrics": section}, Path("/tmp"))
    assert e.value.message.startswith(message) and "\n" not in e.value.message


def test_good_endpoints_and_the_default_interval() -> None:
    assert MetricsConfig().otlp_interval == 15.0 and MetricsConfig().otlp_endpoint is None
    for endpoint in ("collector:4317", "http://127.0.0.1:4317", "https://otel.example.com:443/", "[::1]:4317"):
        assert MetricsConfig(otlp_endpoint=endpoint).otlp_endpoint == endpoint
    with pytest.raises(ConfigError, match=r"metrics\.otlp_interval"):
        MetricsConfig(otlp_interval=True)  # type: ignore[arg-type]
