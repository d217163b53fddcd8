"""The kill switch against a live mesh: `agentmesh revoke-agent` (a real process) ends what the revoked
member has open, and refuses it in both directions, while everyone else's calls keep succeeding."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from meshkit import Mesh, running_mesh
from support import TD, raw_channel, task

from agentmesh.context import current_call
from agentmesh.errors import PKIError, Unavailable
from agentmesh.interceptors.client import delegating
from agentmesh.metadata import TXN_LINKS, TXN_TOKEN
from agentmesh.pki import write_identity
from agentmesh.runtime.node import MeshNode
from agentmesh.tokens.links import sign_link
from agentmesh.tokens.txn import token_hash
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

AGENTS = {"ingestor": {"roles": ["ingestor"]}, "rogue": {"roles": ["worker"]}, "other": {"roles": ["worker"]}}
POLICY = [
    {"name": "workers-call-ingestor", "action": "allow", "to": ["ingestor"], "from": ["rogue", "other"]},
    {"name": "other-calls-rogue", "action": "allow", "to": ["rogue"], "from": ["other"]},
    {"name": "delegated", "action": "allow", "to": ["ingestor"], "roles": ["client"], "via": ["other"]},
    {"name": "rogue-delegates", "action": "allow", "to": ["other"], "roles": ["client"], "via": ["rogue"]},
    {"name": "ingestor-relays", "action": "allow", "to": ["rogue"], "from": ["ingestor"]},
]


class HoldingAgent(agent_pb2_grpc.AgentServicer):
    """Answers at once, or holds the call open ("hold"): a unary call in flight, a long-lived stream."""

    def __init__(self, node: MeshNode) -> None:
        self.node = node
        self.calls = 0
        self.chains: list[tuple[str, ...]] = []  # the verified delegation chain of every call served
        self.received: list[tuple[str | None, tuple[str, ...]]] = []  # (transaction token, links) of each

    async def Invoke(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> agent_pb2.TaskResult:
        self.calls += 1
        call = current_call()
        self.chains.append(call.chain)
        self.received.append((call.txn_token, call.links))
        text = request.input[0].text
        if text == "hold":
            await asyncio.Event().wait()
        if text.startswith("forward:"):  # call another agent at once (delegating onward when delegated)
            await self.node.stub(text.removeprefix("forward:"), agent_pb2_grpc.AgentStub).Invoke(task(), timeout=5)
        if text.startswith("relay:"):  # hold a call to another agent open
            await self.node.stub(text.removeprefix("relay:"), agent_pb2_grpc.AgentStub).Invoke(agent_pb2.Task(
                id=request.id, input=[agent_pb2.Part(text="hold")]))
        return agent_pb2.TaskResult(task_id=request.id, status=agent_pb2.TASK_STATUS_COMPLETED)

    async def InvokeStream(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> AsyncIterator[
            agent_pb2.TaskEvent]:
        yield agent_pb2.TaskEvent(task_id=request.id, progress="open")
        await asyncio.Event().wait()  # a stream that stays open until something ends it


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path, AGENTS, servicer=HoldingAgent, policy=POLICY) as m:
        yield m


def sid(name: str) -> str:
    return f"spiffe://{TD}/agent/{name}"


async def continue_delegation(mesh: Mesh, member: str, target: str, txn_token: str, received: Sequence[str],
                              trace_id: str) -> agent_pb2.TaskResult:
    """``member`` continuing a delegation it received (``txn_token`` and the links ``received``) toward
    ``target``, as its client chain would: its own token, the transaction token, the links plus its own."""
    files = mesh.nodes[member].identity.files
    key = serialization.load_pem_private_key(files.key, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    own = sign_link(key, files.leaf.public_bytes(serialization.Encoding.DER), signer=sid(member), aud=sid(target),
                    tth=token_hash(txn_token), ph=token_hash(received[-1]), now=time.time(), ttl=60)
    md = [("authorization", f"Bearer {mesh.agent_token(member)}"), (TXN_TOKEN, txn_token),
          (TXN_LINKS, ",".join([*received, own])), ("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01")]
    ch = raw_channel(mesh.config.agent(target).address, target, bundle=mesh.ca.bundle,
                     cert_dir=mesh.config.identity_dir(member))
    try:
        return await agent_pb2_grpc.AgentStub(ch).Invoke(task(), metadata=md, timeout=5)
    finally:
        await ch.close()


def revoke_agent(mesh: Mesh, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    assert mesh.config.source is not None
    return subprocess.run([sys.executable, "-m", "agentmesh.cli.main", "revoke-agent", name, "--config",
                           str(mesh.config.source), *extra], capture_output=True, text=True, timeout=60)


async def test_revoke_agent_cuts_its_streams_and_calls_and_refuses_it_both_ways(mesh: Mesh) -> None:
    rogue, other = mesh.nodes["rogue"], mesh.nodes["other"]
    ingestor_from_rogue = rogue.stub("ingestor", agent_pb2_grpc.AgentStub)
    ingestor_from_other = other.stub("ingestor", agent_pb2_grpc.AgentStub)
    rogue_from_other = other.stub("rogue", agent_pb2_grpc.AgentStub)

    # before: everything works, in both directions
    await ingestor_from_rogue.Invoke(task(), timeout=5)
    await rogue_from_other.Invoke(task(), timeout=5)
    stream = ingestor_from_rogue.InvokeStream(task())
    assert (await stream.read()).progress == "open"
    held = asyncio.ensure_future(ingestor_from_rogue.Invoke(task("hold")))
    while mesh.agents["ingestor"].calls < 2:
        await asyncio.sleep(0.01)
    # a real delegation through rogue: rogue exchanged the client's token (the first hop), other delegates on
    txn = (await rogue.exchange(mesh.client_token(), route="test")).token
    with delegating(txn):
        await rogue.stub("other", agent_pb2_grpc.AgentStub).Invoke(task("forward:ingestor"), timeout=5)
    assert mesh.agents["ingestor"].chains[-1] == (sid("rogue"), sid("other"))
    received_txn, received = mesh.agents["other"].received[-1]  # what other holds of rogue's delegation
    assert received_txn == txn and len(received) == 1
    await continue_delegation(mesh, "other", "ingestor", txn, received, secrets.token_hex(16))  # accepted before

    done = revoke_agent(mesh, "rogue", "--reason", "compromised in test")
    assert done.returncode == 0, done.stderr
    assert "revoked rogue: 1 certificate(s)" in done.stdout

    # its open stream and its call in flight end with UNAUTHENTICATED (not at connection age: now)
    with pytest.raises(grpc.aio.AioRpcError) as cut:
        await asyncio.wait_for(stream.read(), 10)
    assert cut.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in (cut.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await asyncio.wait_for(held, 10)
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # new calls from it fail; calls to it are refused by the caller; delegations it started are refused
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ingestor_from_rogue.Invoke(task(), timeout=5)
    assert refused.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE)
    await other.wait_for_trust(lambda t: "rogue" in t.revoked_members)
    with pytest.raises(Unavailable, match="rogue is revoked"):
        await rogue_from_other.Invoke(task(), timeout=5)
    await mesh.nodes["ingestor"].wait_for_trust(lambda t: "rogue" in t.revoked_members)
    trace_id = secrets.token_hex(16)  # the same continuation as before: rogue's link now names a revoked member
    with pytest.raises(grpc.aio.AioRpcError) as chain:
        await continue_delegation(mesh, "other", "ingestor", txn, received, trace_id)
    assert chain.value.code() == grpc.StatusCode.UNAUTHENTICATED
    details = chain.value.details() or ""
    assert details.startswith(f"hop {sid('rogue')}: ") and "revoked" in details, details

    # everyone else keeps working, delegations through other included
    await ingestor_from_other.Invoke(task(), timeout=5)
    with delegating((await other.exchange(mesh.client_token(), route="test")).token):
        await ingestor_from_other.Invoke(task(), timeout=5)
    assert mesh.agents["ingestor"].chains[-1] == (sid("other"),)

    # renewal and join are blocked, the CA says why, and the audit log says who
    listing = subprocess.run([sys.executable, "-m", "agentmesh.cli.main", "cert", "list", "--ca",
                              str(mesh.config.ca_dir)], capture_output=True, text=True, timeout=60)
    assert "compromised in test" in listing.stdout
    with pytest.raises(PKIError, match="revoked"):
        await rogue.renewer.renew()  # type: ignore[union-attr]
    mesh.flush()
    records = [json.loads(line) for line in mesh.audit_path.read_text().splitlines()]
    admin = [r for r in records if r["name"] == "agentmesh.admin/RevokeAgent"]
    assert admin and admin[0]["attributes"]["agentmesh.admin.reason"] == "compromised in test"
    (refusal,) = [r for r in records if r["kind"] == "server" and r["trace_id"] == trace_id]
    assert refusal["attributes"]["agentmesh.agent"] == "ingestor"
    assert refusal["attributes"]["agentmesh.delegation.check"] == "link-revoked"


async def test_reinstate_lifts_the_block(mesh: Mesh) -> None:
    assert revoke_agent(mesh, "rogue").returncode == 0
    cmd = [sys.executable, "-m", "agentmesh.cli.main", "reinstate", "rogue", "--config", str(mesh.config.source)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and "reinstated rogue" in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and again.stderr.count("\n") == 1 and "not revoked" in again.stderr


async def test_revoke_agent_refuses_unknown_members_in_one_line(mesh: Mesh) -> None:
    bad = revoke_agent(mesh, "nobody")
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "not a member" in bad.stderr


async def test_clients_refuse_a_server_presenting_a_revoked_certificate(mesh: Mesh) -> None:
    """Revocation in the client's direction too: the ingestor keeps serving with a certificate that was
    revoked (it also holds a valid one, so the member as a whole is not revoked): callers stop calling it."""
    other = mesh.nodes["other"]
    stub = other.stub("ingestor", agent_pb2_grpc.AgentStub)
    await stub.Invoke(task(), timeout=5)  # before: fine
    served = mesh.nodes["ingestor"].identity.files.leaf.serial_number
    spare = mesh.ca.issue("ingestor")  # a valid certificate it does not use (yet)
    mesh.ca.revoke(format(served, "x"))
    await other.wait_for_trust(lambda t: served in t.revoked_serials)
    assert "ingestor" not in other.trust.snapshot.revoked_members  # type: ignore[union-attr]
    deadline = asyncio.get_running_loop().time() + 10
    while True:  # the probe runs as soon as the new trust data arrives
        try:
            await stub.Invoke(task(), timeout=5)
        except Unavailable as e:
            assert "presents a revoked certificate" in e.message
            break
        assert asyncio.get_running_loop().time() < deadline, "calls to a server with a revoked certificate go on"
        await asyncio.sleep(0.05)
    # and it is the certificate, not the name: once the ingestor presents a valid one, calls resume
    # (it cannot renew itself with the revoked one: the operator installs the spare)
    write_identity(spare, mesh.nodes["ingestor"].identity.dir)
    mesh.nodes["ingestor"].identity.reload()
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        try:
            await stub.Invoke(task(), timeout=5)
            break
        except (Unavailable, grpc.aio.AioRpcError):
            assert asyncio.get_running_loop().time() < deadline, "calls did not resume"
            await asyncio.sleep(0.05)


async def test_a_join_token_made_before_the_kill_switch_never_works(mesh: Mesh) -> None:
    from agentmesh.pki.join import JoinRefused, JoinTokens

    tokens = JoinTokens(mesh.config.ca_dir)
    early = tokens.create("rogue")
    assert revoke_agent(mesh, "rogue").returncode == 0
    cmd = [sys.executable, "-m", "agentmesh.cli.main", "reinstate", "rogue", "--config", str(mesh.config.source)]
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=60).returncode == 0
    with pytest.raises(JoinRefused, match="voided"):
        tokens.redeem(early)
    tokens.redeem(tokens.create("rogue"))  # a token made after reinstating works


async def test_a_handler_whose_onward_call_dies_with_a_revoked_member_answers_its_caller(mesh: Mesh) -> None:
    """other -> ingestor -> rogue (held); revoking rogue ends ingestor's onward call: other gets UNAVAILABLE
    at once instead of waiting for its deadline."""
    relay = mesh.nodes["other"].stub("ingestor", agent_pb2_grpc.AgentStub)
    pending = asyncio.ensure_future(relay.Invoke(task("relay:rogue"), timeout=60))
    while mesh.agents["rogue"].calls < 1:
        await asyncio.sleep(0.01)
    assert revoke_agent(mesh, "rogue").returncode == 0
    with pytest.raises(grpc.aio.AioRpcError) as answered:
        await asyncio.wait_for(pending, 10)
    assert answered.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_revoked_member_that_starts_is_told_so_at_once(mesh: Mesh) -> None:
    assert revoke_agent(mesh, "rogue").returncode == 0
    node = MeshNode(mesh.config, "rogue")
    try:
        with pytest.raises(PKIError, match=r"refuses this member.*revoked"):
            await node.start(timeout=20)  # not a 20 s wait: the refusal is the answer
    finally:
        await node.close()
