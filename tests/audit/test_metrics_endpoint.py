"""Golden metrics of real members over mTLS, scraped from their own endpoints over HTTP: each outcome
counted with the labels operators filter on, and nothing a caller chooses or a principal's name ever
becomes a label."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import grpc
import pytest
from meshkit import Mesh, running_mesh
from promkit import fetch, samples, scrape_until, value
from support import raw_channel, task

from agentmesh.interceptors.client import delegating
from agentmesh.v1 import agent_pb2_grpc

AGENTS = {"ingestor": {"roles": ["ingestor"]}, "summarizer": {"roles": ["summarizer"]}}
MEMBERS = ("control", "ingestor", "summarizer", "bridge")
SECTIONS: dict[str, Any] = {
    "policy": [
        {"name": "ingestor-to-summarizer", "action": "allow", "to": ["summarizer"], "from": ["ingestor"]},
        {"name": "client-starts", "action": "allow", "to": ["ingestor"], "roles": ["client"], "via": ["bridge"]},
    ],
    "rate_limits": {"rules": [{"name": "clients", "match": {"roles": ["client"]}, "rate": "1/m", "burst": 2}]},
    "guard": {"default_patterns": False, "patterns": ["xyzzy"]},
    "metrics": {"addresses": {name: "127.0.0.1:0" for name in MEMBERS}},
}
REQUESTS = "agentmesh_server_requests_total"


@pytest.fixture
async def mesh(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with running_mesh(tmp_path, AGENTS, **SECTIONS) as m:
        yield m


def url(mesh: Mesh, name: str) -> str:
    endpoint = mesh.control.metrics_endpoint if name == "control" else mesh.nodes[name].metrics_endpoint
    assert endpoint is not None
    return str(endpoint.url)


async def raw_call(mesh: Mesh, peer: str, target: str, method: str, token: str | None) -> grpc.StatusCode:
    """A call with ``peer``'s certificate, to any method name, with any token (or none)."""
    ch = raw_channel(mesh.config.agent(target).address, target, bundle=mesh.ca.bundle,
                     cert_dir=mesh.config.identity_dir(peer))
    md = [("authorization", f"Bearer {token}")] if token else []
    try:
        await ch.unary_unary(method)(b"", metadata=md, timeout=5)
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as e:
        return e.code()
    finally:
        await ch.close()


async def test_every_member_serves_its_own_endpoint_only_when_configured(mesh: Mesh, tmp_path: Path) -> None:
    urls = {url(mesh, name) for name in MEMBERS}
    assert len(urls) == 4
    for name in MEMBERS:
        text = await scrape_until(url(mesh, name), lambda t: "agentmesh_member_start_time_seconds" in t)
        assert value(text, "agentmesh_member_start_time_seconds", member=name) > 0
        assert value(text, "agentmesh_certificate_expiry_seconds", member=name) > 3600
        assert 0 <= value(text, "agentmesh_revocation_data_age_seconds", member=name) < 120
        assert {s.labels.get("member") for s in samples(text) if "member" in s.labels} == {name}
    ingestor = await scrape_until(url(mesh, "ingestor"), lambda t: "agentmesh_token_expiry_seconds" in t)
    assert 0 < value(ingestor, "agentmesh_token_expiry_seconds") <= mesh.config.tokens.ttl
    assert "agentmesh_audit_spans_total" in ingestor
    async with running_mesh(tmp_path / "off", AGENTS) as plain:  # no metrics section: no endpoint
        assert all(node.metrics_endpoint is None for node in plain.nodes.values())
        assert plain.control.metrics_endpoint is None


async def test_allow_deny_ratelimited_and_guard_are_counted_with_their_labels(mesh: Mesh) -> None:
    summarizer = mesh.nodes["ingestor"].stub("summarizer", agent_pb2_grpc.AgentStub)
    for _ in range(3):
        await summarizer.Invoke(task())
    with pytest.raises(grpc.aio.AioRpcError) as blocked:
        await summarizer.Invoke(task("say xyzzy to me"))
    assert blocked.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await mesh.nodes["summarizer"].stub("ingestor", agent_pb2_grpc.AgentStub).Invoke(task())
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    ingestor = mesh.nodes["bridge"].stub("ingestor", agent_pb2_grpc.AgentStub)
    codes = []
    for _ in range(3):
        with delegating(await mesh.txn(mesh.client_token("alice@example.org"))):
            try:
                await ingestor.Invoke(task())
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as e:
                codes.append(e.code())
    assert codes == [grpc.StatusCode.OK, grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED]

    edge = {"source": "ingestor", "destination": "summarizer", "grpc_service": "agentmesh.v1.Agent",
            "grpc_method": "Invoke"}
    text = await scrape_until(url(mesh, "summarizer"), lambda t: value(t, REQUESTS, **edge) >= 4)
    assert value(text, REQUESTS, **edge, grpc_code="OK", decision="allow", principal_class="member") == 3
    assert value(text, REQUESTS, **edge, grpc_code="PERMISSION_DENIED", decision="guard") == 1
    assert value(text, "agentmesh_guard_hits_total", pattern="custom-0", action="block") == 1
    assert value(text, "agentmesh_server_request_duration_seconds_count", **edge) == 4

    text = await scrape_until(url(mesh, "ingestor"), lambda t: value(t, REQUESTS, destination="ingestor") >= 4)
    assert value(text, REQUESTS, source="summarizer", grpc_code="PERMISSION_DENIED", decision="deny") == 1
    from_bridge = {"source": "bridge", "principal_class": "mesh"}  # alice: a principal of the mesh's issuer
    assert value(text, REQUESTS, **from_bridge, grpc_code="OK", decision="allow") == 2
    assert value(text, REQUESTS, **from_bridge, grpc_code="RESOURCE_EXHAUSTED", decision="ratelimited") == 1
    assert value(text, "agentmesh_ratelimit_decisions_total", result="allowed") == 2
    assert value(text, "agentmesh_ratelimit_decisions_total", result="limited") == 1
    # the calls the ingestor made, as it saw them
    assert value(text, "agentmesh_client_requests_total", destination="summarizer", grpc_code="OK") == 3
    assert value(text, "agentmesh_client_requests_total", destination="summarizer",
                 grpc_code="PERMISSION_DENIED") == 1

    bridge = await scrape_until(url(mesh, "bridge"), lambda t: "agentmesh_client_requests_total{" in t)
    assert value(bridge, "agentmesh_client_requests_total", destination="ingestor", grpc_code="OK") == 2
    assert value(bridge, "agentmesh_client_requests_total", destination="ingestor",
                 grpc_code="RESOURCE_EXHAUSTED") == 1

    every = "".join([text, bridge, *(fetch(url(mesh, n)) for n in ("summarizer", "control"))])
    assert "alice" not in every  # a principal is never a label
    assert not [s for s in samples(every) if any(v.startswith("spiffe://") for v in s.labels.values())]


async def test_methods_nobody_serves_and_refused_tokens_stay_bounded(mesh: Mesh) -> None:
    token = mesh.agent_token("ingestor")
    names = [f"/evil{i}.Probe/{secrets.token_hex(6)}" for i in range(25)]
    for method in names:
        assert await raw_call(mesh, "ingestor", "summarizer", method, token) == grpc.StatusCode.UNIMPLEMENTED
    missing = await raw_call(mesh, "ingestor", "summarizer", "/agentmesh.v1.Agent/Invoke", None)
    assert missing == grpc.StatusCode.UNAUTHENTICATED

    text = await scrape_until(url(mesh, "summarizer"),
                              lambda t: value(t, REQUESTS, grpc_method="unknown") >= 25
                              and value(t, "agentmesh_auth_failures_total") >= 1)
    unknown = [s for s in samples(text) if s.name == REQUESTS and s.labels["grpc_method"] == "unknown"]
    assert len(unknown) == 1 and unknown[0].value == 25
    assert unknown[0].labels["grpc_service"] == "unknown" and unknown[0].labels["grpc_code"] == "UNIMPLEMENTED"
    assert not [n for n in names if n.rsplit("/", 1)[1] in text or n.split("/")[1] in text]
    assert value(text, "agentmesh_auth_failures_total", stage="token", reason="missing") == 1
    assert value(text, REQUESTS, source="ingestor", principal_class="none", grpc_code="UNAUTHENTICATED",
                 decision="deny") == 1
