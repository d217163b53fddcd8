"""The bridge and a method an agent's descriptors declare but its server does not serve (issue 16, item 6).

The bridge authenticates its client before it maps anything (an unauthenticated client gets 401 for
every path under /v1/agents/, whether it names an agent, a method, a verb or a shape that exists); the
agent then runs its chain (the bridge's delegation, the client's principal, the policy, the audit span)
before it answers UNIMPLEMENTED: a client the policy refuses gets 403, one it allows 501.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from bridgekit import AGENT_MODULE, PROBE_MODULE, BridgeMesh, running_bridge
from support import EchoAgent

from agentmesh.runtime.node import MeshNode
from agentmesh.v1 import agent_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="module")

AGENTS: dict[str, dict[str, Any]] = {
    "alpha": {"roles": ["alpha"], "descriptors": [AGENT_MODULE, PROBE_MODULE]},
    # declares Probe, serves only Agent (an older build, a config ahead of the deployment...)
    "half": {"roles": ["half"], "descriptors": [AGENT_MODULE, PROBE_MODULE]},
}
POLICY = [{"name": "clients-via-bridge", "action": "allow", "roles": ["client"], "via": ["bridge"]}]
ECHO = "/v1/agents/half/bridgetest.v1.Probe/Echo"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def half(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BridgeMesh]:
    async with running_bridge(tmp_path_factory.mktemp("mesh"), AGENTS, serve=["alpha"], policy=POLICY) as m:
        node = m.nodes["half"] = MeshNode(m.config, "half", check_every=0)
        await node.start(timeout=10)
        server = m.servers["half"] = node.server(grace=0.2)
        server.add(agent_pb2_grpc.add_AgentServicer_to_server, EchoAgent("half"), "agentmesh.v1.Agent")
        await server.start(node.address)
        yield m


async def half_span(mesh: BridgeMesh, principal: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """half's server span of the call made for ``principal``, if it recorded one."""
    path = mesh.config.audit.jsonl_path
    assert path is not None
    until = time.monotonic() + timeout
    while True:
        for node in mesh.nodes.values():
            node.sink.force_flush(5)
        found = [r for line in path.read_text().splitlines() if line.strip()
                 if (r := json.loads(line))["kind"] == "server"
                 and r["attributes"].get("agentmesh.agent") == "half"
                 and r["attributes"].get("enduser.id") == principal]
        if found or time.monotonic() > until:
            return found[0] if found else None
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(("verb", "path"), [
    ("POST", ECHO),  # declared, not served
    ("POST", "/v1/agents/half/bridgetest.v1.Probe/Upload"),  # client streaming: the bridge's 501
    ("POST", "/v1/agents/half/bridgetest.v1.Probe/NoSuchMethod"),  # declared nowhere: 404
    ("DELETE", "/v1/agents/half/bridgetest.v1.Probe/Echo"),  # a verb the route does not take: 405
    ("POST", "/v1/agents/nobody/agentmesh.v1.Agent/Invoke"),  # no such agent: 404
])
async def test_an_unauthenticated_client_gets_401_before_any_route_is_mapped(half: BridgeMesh, verb: str,
                                                                           path: str) -> None:
    r = await half.client.request(verb, path, json={"name": "x"})
    assert r.status_code == 401 and r.json()["code"] == "UNAUTHENTICATED", r.text
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="agentmesh"'


async def test_an_allowed_client_gets_501_after_the_agent_authenticated_and_audited_the_call(
        half: BridgeMesh) -> None:
    principal = f"u-{secrets.token_hex(4)}@example.org"
    r = await half.client.post(ECHO, json={"name": "x"}, headers=half.auth(principal))
    assert r.status_code == 501 and r.json()["code"] == "UNIMPLEMENTED", r.text
    span = await half_span(half, principal)
    assert span is not None, "the agent did not audit the call"
    # declared, not served: the agent records no method name (its caller's choice): rpc.method _OTHER
    assert span["name"] == "grpc" and span["attributes"]["rpc.method"] == "_OTHER"
    assert span["attributes"]["rpc.response.status_code"] == "UNIMPLEMENTED" and span["status"] == "ERROR"
    assert span["attributes"]["agentmesh.decision"] == "allow"
    assert span["attributes"]["agentmesh.delegation.chain"][-1].endswith("/agent/bridge")


async def test_a_client_the_policy_refuses_gets_403_not_501(half: BridgeMesh) -> None:
    principal = f"u-{secrets.token_hex(4)}@example.org"
    r = await half.client.post(ECHO, json={"name": "x"}, headers=half.auth(principal, roles=["viewer"]))
    assert r.status_code == 403 and r.json()["code"] == "PERMISSION_DENIED", r.text
    span = await half_span(half, principal)
    assert span is not None and span["attributes"]["rpc.response.status_code"] == "PERMISSION_DENIED"
    assert span["status"] == "OK" and span["attributes"]["error.type"] == "PERMISSION_DENIED"  # UNSET: a refusal
    assert span["attributes"]["agentmesh.decision"] == "deny"


async def test_a_served_method_of_the_same_agent_still_answers(half: BridgeMesh) -> None:
    r = await half.client.post("/v1/agents/half/agentmesh.v1.Agent/Invoke",
                               json={"id": "t1", "input": [{"text": "hi"}]}, headers=half.auth())
    assert r.status_code == 200, r.text
