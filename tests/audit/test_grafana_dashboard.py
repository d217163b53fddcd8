"""examples/grafana/agentmesh-dashboard.json asks only for series the members export, by labels they have.

A member's metrics are built for real (an audit sink, served and made calls, refusals, guard hits, rate-limit
results, gauges, exported spans) and rendered by the real collector (agentmesh/audit/prom.py) as Prometheus
scrapes it; every PromQL query of the dashboard (panels and variables) is then checked against that exposition:
each metric name as written (a counter with ``_total``, a histogram's ``_bucket``: the names Prometheus stores),
each label in a selector, in ``by`` / ``without`` / ``on`` / ``ignoring`` / ``group_left``, and in a legend.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.trace import SpanKind
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agentmesh.audit import build_audit, record_denial, record_guard
from agentmesh.audit.metrics import CERT_EXPIRY, REVOCATION_AGE, TOKEN_EXPIRY, AuditMetrics
from agentmesh.audit.prom import member_registry
from agentmesh.config import AuditConfig
from agentmesh.context import CallContext
from agentmesh.identity import PeerIdentity, SpiffeId
from agentmesh.interceptors.client import ClientSteps

DASHBOARD = Path(__file__).parents[2] / "examples" / "grafana" / "agentmesh-dashboard.json"
METHOD = "/agentmesh.v1.Agent/Invoke"
_METRIC = re.compile(r"\bagentmesh_[a-z_]+\b")
_SELECTOR = re.compile(r"\b(agentmesh_[a-z_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_LEGEND = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_LABEL_VALUES = re.compile(r"label_values\(\s*(agentmesh_[a-z_]+)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)")


def _peer(name: str) -> PeerIdentity:
    return PeerIdentity(spiffe_id=SpiffeId.for_agent("example.org", name), serial=1, not_after=2e9, thumbprint="t",
                        name=name)


class _FinishedCall:
    """What a channel hands the client chain's end step: a call that already ended OK."""

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        callback(self)

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK


async def _made_call(steps: ClientSteps, metrics: AuditMetrics) -> None:
    """A call made through the client chain's steps (its span started and ended as a mesh channel does)."""
    prepared = steps.prepare_now(METHOD, None, 5.0)
    assert prepared is not None
    steps.end_when_done(_FinishedCall(), prepared[2])
    for _ in range(100):  # the span ends in a task once the call's status is read
        if metrics.client:
            return
        await asyncio.sleep(0)
    raise AssertionError("the client span did not end")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Sample name -> its label names, as a member with some of every kind of traffic exposes them."""
    cfg = AuditConfig(exporters=("jsonl",), jsonl_path=tmp_path_factory.mktemp("audit") / "audit.jsonl")
    sink = build_audit(cfg, service_name="summarizer")
    metrics = sink.metrics
    metrics.know(members=("ingestor", "summarizer", "bridge"), issuers=())
    tracer = sink.tracer

    def served(code: grpc.StatusCode, decision: str, *, remaining: int | None = None,
               denial: tuple[str, str] | None = None, guard: str | None = None) -> None:
        span = tracer.start_span(METHOD, kind=SpanKind.SERVER)
        if guard is not None:
            record_guard(span, "block", guard)
        if denial is not None:
            record_denial(span, *denial)
        span.end()
        call = CallContext(method=METHOD, agent="summarizer", peer=_peer("ingestor"),
                           principal="spiffe://example.org/agent/ingestor", decision=decision,
                           ratelimit_remaining=remaining)
        metrics.record_server(call, code, 0.003, registered=True, span=span)

    served(grpc.StatusCode.OK, "allow", remaining=4)
    served(grpc.StatusCode.RESOURCE_EXHAUSTED, "ratelimited", remaining=0)
    served(grpc.StatusCode.UNAUTHENTICATED, "deny", denial=("token", "token expired"))
    served(grpc.StatusCode.PERMISSION_DENIED, "deny", denial=("guard", "payload guard: blocked pattern custom-0"),
           guard="custom-0")
    asyncio.run(_made_call(ClientSteps("summarizer", "validator", None, tracer), metrics))
    for name in (CERT_EXPIRY, TOKEN_EXPIRY, REVOCATION_AGE):
        metrics.watch(name, lambda: 42.0)
    assert sink.force_flush(10)
    text = generate_latest(member_registry(metrics, lambda: sink.stats)).decode()
    sink.shutdown(5)
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def _queries() -> Iterator[tuple[str, str, str]]:
    """(where, PromQL, legend) of every query of the dashboard: panel targets, then template variables."""
    doc = json.loads(DASHBOARD.read_text())

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(doc["panels"]):
        for t in p.get("targets", []):
            yield f"panel {p['title']!r} {t['refId']}", t["expr"], t.get("legendFormat", "")
    for v in doc["templating"]["list"]:
        if v.get("type") == "query":
            query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            yield f"variable {v['name']!r}", query, ""


def problems(expr: str, legend: str, exported: dict[str, set[str]]) -> list[str]:
    """What in ``expr`` (and its ``legend``) is not a series or a label the members export."""
    out = []
    names = _METRIC.findall(expr)
    if not names:
        out.append("no agentmesh metric")
    for name in names:
        if name not in exported:
            family = re.sub(r"_(total|bucket|count|sum)$", "", name)
            known = sorted(n for n in exported if n.startswith(family))
            out.append(f"{name}: not exported" + (f" (the family's series: {', '.join(known)})" if known else ""))
    labels = set().union(*(exported.get(n, set()) for n in names)) if names else set()
    used = [m for _, body in _SELECTOR.findall(expr) for m in _MATCHER.findall(body)]
    grouped = [label.strip() for group in _GROUPING.findall(expr) for label in group.split(",") if label.strip()]
    used += grouped
    used += [label for _, label in _LABEL_VALUES.findall(expr)]
    for label in used:
        if label not in labels:
            out.append(f"label {label!r}: not on {', '.join(sorted(set(names)))} (labels: {', '.join(sorted(labels))})")
    kept = set(grouped) if re.search(r"\b(sum|min|max|avg|count)\s+by\b", expr) else labels
    for label in _LEGEND.findall(legend):
        if label not in kept:
            out.append(f"legend {{{{{label}}}}}: not a label of the result (kept: {', '.join(sorted(kept))})")
    return out


def test_every_query_asks_for_exported_series_and_labels(exported: dict[str, set[str]]) -> None:
    queries = list(_queries())
    assert len(queries) >= 15
    found = {where: p for where, expr, legend in queries if (p := problems(expr, legend, exported))}
    assert found == {}


def test_every_family_a_member_exports_is_on_the_dashboard(exported: dict[str, set[str]]) -> None:
    used = {name for _, expr, _ in _queries() for name in _METRIC.findall(expr)}
    families = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in exported}
    assert families <= {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in used}


def test_the_dashboard_imports_with_a_datasource_input() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in doc["__inputs"]] == ["DS_PROMETHEUS"] and doc["__inputs"][0]["pluginId"] == "prometheus"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) and doc["uid"] and doc["schemaVersion"] >= 36
    for p in doc["panels"]:
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
            assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in p["targets"]), p["title"]


@pytest.mark.parametrize(("expr", "legend", "complaint"), [
    ("sum by (source) (rate(agentmesh_server_request_total[5m]))", "", "agentmesh_server_request_total: not exported"),
    ("sum(rate(agentmesh_server_requests[5m]))", "", "agentmesh_server_requests: not exported (the family's series: "
                                                     "agentmesh_server_requests_total)"),
    ("rate(agentmesh_server_request_duration_seconds[5m])", "", "not exported"),
    ("agentmesh_certificate_expiry_seconds_total", "", "not exported"),
    ("sum by (destinaton) (rate(agentmesh_server_requests_total[5m]))", "", "label 'destinaton'"),
    ('rate(agentmesh_guard_hits_total{patern="custom-0"}[5m])', "", "label 'patern'"),
    ("sum by (source) (rate(agentmesh_ratelimit_decisions_total[5m]))", "", "label 'source'"),
    ("histogram_quantile(0.9, sum by (le) (rate(agentmesh_server_requests_total[5m])))", "", "label 'le'"),
    ("a / ignoring (decison) group_left agentmesh_server_requests_total", "", "label 'decison'"),
    ("label_values(agentmesh_server_requests_total, destiantion)", "", "label 'destiantion'"),
    ("sum by (member) (agentmesh_certificate_expiry_seconds)", "{{membr}}", "legend {{membr}}"),
    ("sum by (source) (rate(agentmesh_server_requests_total[5m]))", "{{destination}}", "legend {{destination}}"),
])
def test_a_misspelt_metric_or_label_is_caught(expr: str, legend: str, complaint: str,
                                              exported: dict[str, set[str]]) -> None:
    found = problems(expr, legend, exported)
    assert any(complaint in p for p in found), found
