"""The golden metrics of a member, aggregated in place: labels (bounded whatever callers send), the
refusals read off a span, client calls from their spans, and reading the exposition back as edges."""

from __future__ import annotations

import ast
from pathlib import Path

import grpc
import pytest
from opentelemetry.trace import SpanKind
from prometheus_client import generate_latest

from agentmesh.audit import attributes as A
from agentmesh.audit import record_denial, record_guard, rpc_attributes
from agentmesh.audit.fastspan import FastTracer
from agentmesh.audit.metrics import (
    BUCKETS,
    GAUGES,
    OTHER,
    UNKNOWN,
    AuditMetrics,
    auth_failure_reason,
    principal_class,
)
from agentmesh.audit.prom import member_registry
from agentmesh.audit.promview import edges, parse, quantile
from agentmesh.audit.spans import STATUS_ATTRIBUTES
from agentmesh.context import CallContext
from agentmesh.identity import PeerIdentity, SpiffeId

TOKENS = Path(__file__).parents[2] / "agentmesh" / "tokens"
METHOD = "/agentmesh.v1.Agent/Invoke"


def peer(name: str) -> PeerIdentity:
    sid = SpiffeId.for_agent("example.org", name)
    return PeerIdentity(spiffe_id=sid, serial=1, not_after=2e9, thumbprint="t", name=name)


def served(metrics: AuditMetrics, *, source: str = "ingestor", method: str = METHOD, decision: str = "allow",
           code: grpc.StatusCode = grpc.StatusCode.OK, seconds: float = 0.002, registered: bool = True,
           principal: str | None = "spiffe://example.org/agent/ingestor", span: object = None,
           remaining: int | None = None) -> None:
    call = CallContext(method=method, agent=metrics.member, peer=peer(source), principal=principal,
                       decision=decision, ratelimit_remaining=remaining)
    metrics.record_server(call, code, seconds, registered=registered, span=span)


def test_calls_are_counted_by_edge_method_status_and_decision() -> None:
    metrics = AuditMetrics("summarizer", members=("ingestor", "summarizer"))
    served(metrics)
    served(metrics, seconds=0.02)
    served(metrics, decision="deny", code=grpc.StatusCode.PERMISSION_DENIED)
    allow = ("ingestor", "member", "agentmesh.v1.Agent", "Invoke", "OK", "allow")
    deny = ("ingestor", "member", "agentmesh.v1.Agent", "Invoke", "PERMISSION_DENIED", "deny")
    assert set(metrics.server) == {allow, deny}
    s = metrics.server[allow]
    assert s.count == 2 and abs(s.sum - 0.022) < 1e-9
    assert s.buckets[BUCKETS.index(0.0025)] == 1 and s.buckets[BUCKETS.index(0.025)] == 1


def test_a_method_nobody_serves_is_one_label_whatever_its_name() -> None:
    metrics = AuditMetrics("summarizer", members=("ingestor",))
    for i in range(500):
        served(metrics, method=f"/evil{i}.Svc/probe-{i}", registered=False, decision="deny",
               code=grpc.StatusCode.PERMISSION_DENIED)
    (labels,) = metrics.server
    assert labels == ("ingestor", "member", UNKNOWN, UNKNOWN, "PERMISSION_DENIED", "deny")
    assert metrics.server[labels].count == 500


def test_a_source_outside_the_config_is_other_and_series_are_bounded() -> None:
    metrics = AuditMetrics("summarizer", members=("ingestor",), max_series=3)
    served(metrics, source="stranger")
    assert ("other", "member", "agentmesh.v1.Agent", "Invoke", "OK", "allow") in metrics.server
    for i in range(10):  # registered methods too: a server with very many is bounded all the same
        served(metrics, method=f"/pkg.S/M{i}")
    assert len(metrics.server) <= 4 and metrics.overflow == 8
    assert (OTHER, OTHER, OTHER, OTHER, "OK", "allow") in metrics.server


@pytest.mark.parametrize(("principal", "txn_sub", "expected"), [
    (None, None, "none"),
    ("spiffe://example.org/agent/ingestor", None, "member"),
    ("alice@example.org", "alice@example.org", "mesh"),
    ("https://idp.example.com#alice", "https://idp.example.com#alice", "https://idp.example.com"),
    ("https://other.example#bob", "https://other.example#bob", "mesh"),  # not a configured issuer: never its name
])
def test_principal_class(principal: str | None, txn_sub: str | None, expected: str) -> None:
    assert principal_class(principal, txn_sub, ["https://idp.example.com"]) == expected


def test_refusals_and_guard_hits_are_read_off_the_span() -> None:
    metrics = AuditMetrics("summarizer", members=("ingestor",))
    tracer = FastTracer("summarizer")

    span = tracer.start_span(METHOD, kind=SpanKind.SERVER)
    record_guard(span, "block", "custom-0")
    record_denial(span, "guard", "payload guard: blocked pattern custom-0")
    served(metrics, decision="deny", code=grpc.StatusCode.PERMISSION_DENIED, span=span)

    span = tracer.start_span(METHOD, kind=SpanKind.SERVER)
    record_denial(span, "token", "token expired")
    served(metrics, decision="deny", code=grpc.StatusCode.UNAUTHENTICATED, span=span, principal=None)

    span = tracer.start_span(METHOD, kind=SpanKind.SERVER)
    span.set_attribute(A.DELEGATION_CHECK, "link-aud")
    record_denial(span, "delegation", "the hop link of x is addressed to itself")
    served(metrics, decision="deny", code=grpc.StatusCode.UNAUTHENTICATED, span=span, principal=None)

    span = tracer.start_span(METHOD, kind=SpanKind.SERVER)
    span.set_attribute(A.RATELIMIT_DEGRADED, True)
    served(metrics, span=span)
    served(metrics, remaining=3)
    served(metrics, decision="ratelimited", code=grpc.StatusCode.RESOURCE_EXHAUSTED, remaining=0)

    assert ("ingestor", "member", "agentmesh.v1.Agent", "Invoke", "PERMISSION_DENIED", "guard") in metrics.server
    assert metrics.guard == {("custom-0", "block"): 1}
    assert metrics.auth_failures == {("token", "expired"): 1, ("delegation", "link-aud"): 1}
    assert metrics.ratelimit == {"backend_open": 1, "allowed": 1, "limited": 1}


def _token_error_messages() -> list[str]:
    """Every literal message of a TokenError raised where tokens are parsed and verified."""
    out = []
    for path in (TOKENS / "verify.py", TOKENS / "jws.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "TokenError" and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    out.append(arg.value)
                elif isinstance(arg, ast.JoinedStr):
                    out.append("".join(v.value for v in arg.values if isinstance(v, ast.Constant)))
    return out


def test_every_token_refusal_has_a_reason_from_the_fixed_set() -> None:
    messages = _token_error_messages()
    assert len(messages) > 20
    reasons = {m: auth_failure_reason("token", m) for m in messages}
    assert not [m for m, r in reasons.items() if r == OTHER], "a token refusal without a reason label"
    assert len(set(reasons.values())) <= 16
    assert auth_failure_reason("delegation", "whatever", "link-aud") == "link-aud"
    assert auth_failure_reason("delegation", "whatever", "Attacker Chosen!") == OTHER


def test_client_calls_are_counted_from_their_spans() -> None:
    metrics = AuditMetrics("ingestor")
    tracer = FastTracer("ingestor", on_end=metrics.on_span_end)
    attrs = {**rpc_attributes(METHOD), A.TARGET: "summarizer"}
    for code in (grpc.StatusCode.OK, grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED):
        span = tracer.start_span(METHOD, kind=SpanKind.CLIENT, attributes=attrs)
        span.set_attributes(STATUS_ATTRIBUTES[code])
        span.end()
    span = tracer.start_span(METHOD, kind=SpanKind.CLIENT, attributes=attrs)
    span.end()  # never sent (no status)
    tracer.start_span(METHOD, kind=SpanKind.SERVER).end()  # a server span is not a client call
    assert {k: s.count for k, s in metrics.client.items()} == {
        ("summarizer", "agentmesh.v1.Agent", "Invoke", "OK"): 2,
        ("summarizer", "agentmesh.v1.Agent", "Invoke", "PERMISSION_DENIED"): 1,
        ("summarizer", "agentmesh.v1.Agent", "Invoke", "NOT_STARTED"): 1,
    }


def test_quantile_follows_prometheus_histogram_quantile() -> None:
    counts = [0.0] * (len(BUCKETS) + 1)
    assert quantile(0.5, counts) is None
    counts[BUCKETS.index(0.01)] = 10  # all ten between 5 ms and 10 ms
    assert quantile(0.5, counts) == pytest.approx(0.0075)
    counts[-1] = 90  # most past the last bound: the highest finite bound
    assert quantile(0.99, counts) == BUCKETS[-1]


def test_the_exposition_reads_back_as_edges() -> None:
    clock = iter([100.0]).__next__
    metrics = AuditMetrics("summarizer", members=("ingestor", "bridge"), clock=clock)
    for _ in range(8):
        served(metrics, seconds=0.004)
    served(metrics, decision="deny", code=grpc.StatusCode.PERMISSION_DENIED)
    served(metrics, code=grpc.StatusCode.INTERNAL)
    served(metrics, source="bridge", method="/agentmesh.v1.TokenService/IssueAgentToken")  # housekeeping
    text = generate_latest(member_registry(metrics, lambda: {"exported": 3, "dropped": 0})).decode()
    assert 'agentmesh_audit_spans_total{member="summarizer",outcome="exported"} 3.0' in text

    scrape = parse([text], at=110.0)
    (row,) = edges(scrape)
    assert (row.source, row.destination, row.requests) == ("ingestor", "summarizer", 10)
    assert row.rps == pytest.approx(1.0) and row.error_rate == pytest.approx(0.1)
    assert row.denial_rate == pytest.approx(0.1)
    assert row.p50 is not None and 0.0025 < row.p50 <= 0.005
    assert [e.source for e in edges(parse([text], at=110.0, housekeeping=True))] == ["bridge", "ingestor"]


def test_a_frame_counts_the_window_since_the_previous_one() -> None:
    metrics = AuditMetrics("summarizer", members=("ingestor",), clock=lambda: 100.0)
    for _ in range(10):
        served(metrics, seconds=0.2)
    first = parse([generate_latest(member_registry(metrics)).decode()], at=110.0)
    for _ in range(5):
        served(metrics, seconds=0.0004)
    second = parse([generate_latest(member_registry(metrics)).decode()], at=120.0)
    (row,) = edges(second, first)
    assert row.requests == 5 and row.rps == pytest.approx(0.5)
    assert row.p99 is not None and row.p99 <= 0.0005  # the window's calls only, not the earlier slow ones


def test_an_edge_whose_destination_was_not_scraped_is_seen_by_its_caller() -> None:
    metrics = AuditMetrics("ingestor", clock=lambda: 100.0)
    tracer = FastTracer("ingestor", on_end=metrics.on_span_end)
    attrs = {**rpc_attributes(METHOD), A.TARGET: "summarizer"}
    for code in (grpc.StatusCode.OK,) * 3 + (grpc.StatusCode.PERMISSION_DENIED,):
        span = tracer.start_span(METHOD, kind=SpanKind.CLIENT, attributes=attrs)
        span.set_attributes(STATUS_ATTRIBUTES[code])
        span.end()
    (row,) = edges(parse([generate_latest(member_registry(metrics)).decode()], at=104.0))
    assert (row.source, row.destination, row.seen_by, row.requests) == ("ingestor", "summarizer", "client", 4)
    assert row.denial_rate == pytest.approx(0.25) and row.rps == pytest.approx(1.0)


def test_every_series_a_member_serves_is_documented() -> None:
    metrics = AuditMetrics("summarizer", members=("ingestor",))
    served(metrics)
    for name in GAUGES:
        metrics.watch(name, lambda: 1.0)
    text = generate_latest(member_registry(metrics, lambda: {"exported": 1})).decode()
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert len(families) >= 12
    doc = (Path(__file__).parents[2] / "docs" / "OBSERVABILITY.md").read_text()
    assert not [f for f in families if f"`{f}`" not in doc and f"`{f}_total`" not in doc]
