"""The Transaction Token Service of a running control plane: what an exchange grants and refuses, a hop
asking for a narrower scope (never a wider one), and policy on the verified chain and scope."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from meshkit import Mesh, running_mesh
from support import TD, task

from agentmesh.context import current_call
from agentmesh.errors import MeshError, PermissionDenied, TokenError
from agentmesh.interceptors.client import delegating
from agentmesh.runtime.node import MeshNode
from agentmesh.tokens import RevocationStore, TokenAuthority
from agentmesh.tokens.crypto import b64url_decode
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

AGENTS = {"ingestor": {"roles": ["ingestor"]}, "summarizer": {"roles": ["summarizer"]},
          "validator": {"roles": ["validator"]}}
POLICY = [
    {"name": "client-starts", "action": "allow", "to": ["ingestor"], "roles": ["client"], "via": ["bridge"]},
    {"name": "read-only-summaries", "action": "allow", "to": ["summarizer"], "roles": ["client"],
     "chain": ["bridge", "ingestor"], "scopes": ["documents:read"]},
    {"name": "anything-from-the-bridge-validates", "action": "allow", "to": ["validator"], "roles": ["client"],
     "chain": ["bridge", "**"]},
]
BRIDGE, INGESTOR, SUMMARIZER = (f"spiffe://{TD}/agent/{n}" for n in ("bridge", "ingestor", "summarizer"))


class NarrowingAgent(agent_pb2_grpc.AgentServicer):
    """Reports its verified caller, then follows the JSON instruction in its input: ``{"to": NEXT, "then":
    {...}}`` delegates onward as received; with ``"narrow": SCOPE`` it first asks the control plane for a
    replacement transaction token with that scope and calls NEXT with it."""

    def __init__(self, node: MeshNode) -> None:
        self.node = node

    async def Invoke(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> agent_pb2.TaskResult:
        call = current_call()
        me = json.dumps({"agent": self.node.name, "principal": call.principal, "scope": list(call.scope),
                         "chain": list(call.chain), "txn": call.txn_id})
        out = [agent_pb2.Part(text=me)]
        step = json.loads(request.input[0].text) if request.input else {}
        if "stash" in step:  # keep a replacement for the test to use later
            STASH[self.node.name] = (await self.node.narrow(step["stash"])).token
        if step.get("to"):
            onward = agent_pb2.Task(id=request.id, input=[agent_pb2.Part(text=json.dumps(step.get("then", {})))])
            stub = self.node.stub(step["to"], agent_pb2_grpc.AgentStub)
            if "narrow" in step:
                try:
                    txn = await self.node.narrow(step["narrow"])
                except MeshError as e:
                    await context.abort(e.grpc_code, e.message)
                with delegating(txn.token):
                    res = await stub.Invoke(onward)
            else:
                res = await stub.Invoke(onward)
            out.extend(res.output)
        return agent_pb2.TaskResult(task_id=request.id, status=agent_pb2.TASK_STATUS_COMPLETED, output=out)


STASH: dict[str, str] = {}


def plan(**step: object) -> agent_pb2.Task:
    return task(json.dumps(step))


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path, AGENTS, servicer=NarrowingAgent, policy=POLICY) as m:
        yield m


def claims(token: str) -> tuple[dict[str, object], dict[str, object]]:
    header, payload, _ = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload))


def reports(res: agent_pb2.TaskResult) -> list[dict[str, object]]:
    return [json.loads(p.text) for p in res.output]


async def test_exchange_grants_a_transaction_token_with_the_drafts_claims(mesh: Mesh) -> None:
    client = mesh.client_token(scope="documents:read documents:write", ttl=120)
    reply = await mesh.nodes["bridge"].exchange(client, route="ingestor /agentmesh.v1.Agent/Invoke",
                                                request_context={"req_ip": "192.0.2.7", "request_id": "r-1"})
    header, body = claims(reply.token)
    assert header["typ"] == "txntoken+jwt" and "x5c" not in header
    subject = mesh.nodes["bridge"].verifier.inspect(client)
    assert body["txn"] == reply.txn and len(reply.txn) == 32
    assert body["sub"] == "alice@example.org" and body["aud"] == TD and body["req_wl"] == BRIDGE
    assert body["scope"] == "documents:read documents:write"
    assert body["tctx"] == {"roles": ["client"], "route": "ingestor /agentmesh.v1.Agent/Invoke", "sjti": subject.jti}
    assert body["rctx"] == {"req_ip": "192.0.2.7", "request_id": "r-1"}
    assert body["exp"] <= subject.exp and reply.expires_at == body["exp"]  # never past the client token's
    assert "purp" not in body and "azd" not in body  # names of the current draft only
    narrowed = await mesh.nodes["bridge"].exchange(client, scope="documents:read")
    assert claims(narrowed.token)[1]["scope"] == "documents:read" and narrowed.txn != reply.txn  # one per request


async def test_exchange_refuses_what_is_no_external_principals_token(mesh: Mesh) -> None:
    bridge = mesh.nodes["bridge"]
    honest = await bridge.exchange(mesh.client_token(scope="documents:read"))
    assert honest.token
    refused = {
        "an agent's own (bound) token": mesh.agent_token("ingestor"),
        "a transaction token": honest.token,
        "an expired token": TokenAuthority(mesh.authority.key, mesh.authority.algorithm,
                                           issuer=mesh.authority.issuer, clock=lambda: time.time() - 3600).issue(
            sub="alice@example.org", roles=["client"], audience=mesh.config.tokens.audience, ttl=60),
        "a forged token": mesh.client_token()[:-4] + "AAAA",
    }
    for what, token in refused.items():
        with pytest.raises(TokenError):
            await bridge.exchange(token)
            pytest.fail(f"{what} was exchanged")
    with pytest.raises(PermissionDenied, match="exceeds"):
        await bridge.exchange(mesh.client_token(scope="documents:read"), scope="documents:write")


async def test_a_certificate_holder_outside_the_config_gets_no_transaction_token(mesh: Mesh) -> None:
    outsider = MeshNode(mesh.config, "outsider", check_every=0)
    try:
        await outsider.start(timeout=10)  # it may follow the trust data, like any certificate of the CA
        with pytest.raises(PermissionDenied, match="not a member"):
            await outsider.exchange(mesh.client_token())
    finally:
        await outsider.close()


async def test_a_hop_may_narrow_the_scope_and_policy_sees_the_whole_verified_chain(mesh: Mesh) -> None:
    bridge = mesh.nodes["bridge"]
    client = mesh.client_token(scope="documents:read documents:write")
    with delegating((await bridge.exchange(client)).token):
        res = await bridge.stub("ingestor", agent_pb2_grpc.AgentStub).Invoke(
            plan(to="summarizer", narrow="documents:read", then={"to": "validator"}))
    ingestor, summarizer, validator = reports(res)
    assert ingestor["scope"] == ["documents:read", "documents:write"] and ingestor["chain"] == [BRIDGE]
    # the replacement: same transaction and principal, narrower scope; the chain stays whole downstream
    assert summarizer["txn"] == ingestor["txn"] and summarizer["principal"] == "alice@example.org"
    assert summarizer["scope"] == ["documents:read"] and summarizer["chain"] == [BRIDGE, INGESTOR]
    assert validator["chain"] == [BRIDGE, INGESTOR, SUMMARIZER] and validator["txn"] == ingestor["txn"]


async def test_policy_scopes_refuse_a_transaction_without_the_scope(mesh: Mesh) -> None:
    bridge = mesh.nodes["bridge"]
    stub = bridge.stub("ingestor", agent_pb2_grpc.AgentStub)
    with delegating((await bridge.exchange(mesh.client_token(scope="documents:read"))).token):
        assert len(reports(await stub.Invoke(plan(to="summarizer")))) == 2  # the honest request
    with delegating((await bridge.exchange(mesh.client_token(scope="documents:write"))).token), \
            pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Invoke(plan(to="summarizer"))
    assert "summarizer" in (err.value.details() or "")  # the ingestor's call to the summarizer was refused


async def test_a_replacement_may_never_widen_the_scope(mesh: Mesh) -> None:
    bridge = mesh.nodes["bridge"]
    with delegating((await bridge.exchange(mesh.client_token(scope="documents:read"))).token), \
            pytest.raises(grpc.aio.AioRpcError) as err:
        await bridge.stub("ingestor", agent_pb2_grpc.AgentStub).Invoke(
            plan(to="summarizer", narrow="documents:read documents:write"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "only narrow" in (err.value.details() or "")


async def test_narrow_outside_a_delegated_call_is_a_clear_error(mesh: Mesh) -> None:
    with pytest.raises(TokenError, match="delegated call"):
        await mesh.nodes["ingestor"].narrow("documents:read")


async def test_a_replacement_naming_a_revoked_member_is_refused(mesh: Mesh) -> None:
    """The kill switch reaches the hops a replacement token vouches for (prior), not only those that signed links."""
    bridge, summarizer = mesh.nodes["bridge"], mesh.nodes["summarizer"]
    with delegating((await bridge.exchange(mesh.client_token(scope="documents:read"))).token):
        await bridge.stub("ingestor", agent_pb2_grpc.AgentStub).Invoke(
            plan(to="summarizer", then={"stash": "documents:read"}))
    replacement = STASH.pop("summarizer")
    body = claims(replacement)[1]  # every requesting workload, the newest last; the hops before it, verified
    assert (body["req_wl"], body["prior"]) == ([BRIDGE, SUMMARIZER], [BRIDGE, INGESTOR])
    validator = summarizer.stub("validator", agent_pb2_grpc.AgentStub)
    with delegating(replacement):
        chain = reports(await validator.Invoke(plan()))[0]["chain"]
    assert chain == [BRIDGE, INGESTOR, SUMMARIZER]  # the honest request
    mesh.ca.revoke("ingestor", reason="test: compromised")
    for node in mesh.nodes.values():
        await node.wait_for_trust(lambda t: "ingestor" in t.revoked_members)
    with delegating(replacement), pytest.raises(grpc.aio.AioRpcError) as err:
        await validator.Invoke(plan())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "earlier hop" in (err.value.details() or "")


async def test_a_refused_member_is_the_meshs_fault_a_revoked_client_token_the_clients(mesh: Mesh) -> None:
    """The bridge answers 401 only when the control plane refuses the client's token (TokenError); when it
    refuses the bridge itself, that is the mesh's failure (a 503 at the bridge), never the client's."""
    bridge = mesh.nodes["bridge"]
    client = mesh.client_token()
    revoked = mesh.client_token(sub="carol@example.org")
    assert (await bridge.exchange(client)).token
    jti = bridge.verifier.inspect(revoked).jti
    RevocationStore(mesh.config.ca_dir).revoke(jti, time.time() + 600)
    await bridge.wait_for_trust(lambda t: jti in t.revoked_jtis)
    with pytest.raises(TokenError, match="revoked"):
        await bridge.exchange(revoked)
    mesh.ca.revoke("bridge", reason="test")
    await bridge.wait_for_trust(lambda t: "bridge" in t.revoked_members)
    with pytest.raises(MeshError) as err:
        await bridge.exchange(client)
    assert not isinstance(err.value, TokenError), err.value
