"""The kill switch against a live mesh: `agentmesh revoke-agent` (a real process) ends what the revoked
member has open, and refuses it in both directions, while everyone else's calls keep succeeding."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from meshkit import Mesh, running_mesh
from support import TD, task

from agentmesh.errors import PKIError, Unavailable
from agentmesh.interceptors.client import delegating
from agentmesh.pki import write_identity
from agentmesh.runtime.node import MeshNode
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

AGENTS = {"ingestor": {"roles": ["ingestor"]}, "rogue": {"roles": ["worker"]}, "other": {"roles": ["worker"]}}
POLICY = [
    {"name": "workers-call-ingestor", "action": "allow", "to": ["ingestor"], "from": ["rogue", "other"]},
    {"name": "other-calls-rogue", "action": "allow", "to": ["rogue"], "from": ["other"]},
    {"name": "delegated", "action": "allow", "to": ["ingestor"], "roles": ["client"], "via": ["other"]},
    {"name": "ingestor-relays", "action": "allow", "to": ["rogue"], "from": ["ingestor"]},
]


class HoldingAgent(agent_pb2_grpc.AgentServicer):
    """Answers at once, or holds the call open ("hold"): a unary call in flight, a long-lived stream."""

    def __init__(self, node: MeshNode) -> None:
        self.node = node
        self.calls = 0

    async def Invoke(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> agent_pb2.TaskResult:
        self.calls += 1
        text = request.input[0].text
        if text == "hold":
            await asyncio.Event().wait()
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
    with delegating(mesh.client_token(), actors=(f"spiffe://{TD}/agent/rogue",)):
        await ingestor_from_other.Invoke(task(), timeout=5)  # a delegation naming rogue as an earlier actor

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
    with delegating(mesh.client_token(), actors=(f"spiffe://{TD}/agent/rogue",)), \
            pytest.raises(grpc.aio.AioRpcError) as chain:
        await ingestor_from_other.Invoke(task(), timeout=5)
    assert chain.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked member rogue" in chain.value.details()

    # everyone else keeps working
    await ingestor_from_other.Invoke(task(), timeout=5)

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
