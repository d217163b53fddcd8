"""A call waiting for its token when a renewal replaces its connection goes out on the new one (issue 16).

A renewal gives the member a new certificate; the next call makes a connection presenting it and
retires the old one (``channel.close(grace)``: no new calls on it). A call that was still waiting for
its token (deferred) must not start on the retired connection ("Channel is closed."): it goes out on
the connection that replaced it, with a token bound to the certificate that connection presents.

Renewals are driven as the renewer does them (``renewer.renew()``), not by waiting for a short
lifetime to pass; the tokens arrive when the test says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from meshkit import Mesh, running_mesh

from agentmesh.interceptors.client import ClientSteps
from agentmesh.runtime.channel import MeshChannels
from agentmesh.runtime.credentials import IdentityFiles
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

POLICY = [{"name": "to-svc", "action": "allow", "to": ["svc"], "from": ["bridge"]}]


class GatedTokens:
    """The member's token for one certificate (bound to it, as the control plane issues it); it arrives
    once ``gate`` is set."""

    def __init__(self, mesh: Mesh, files: IdentityFiles, gate: asyncio.Event) -> None:
        node = mesh.nodes["bridge"]
        self.thumbprint = files.thumbprint
        self._token = mesh.authority.issue(sub=str(node.spiffe_id), roles=[], audience=mesh.config.tokens.audience,
                                           ttl=300, cnf_thumbprint=files.thumbprint)
        self._gate = gate

    def cached(self) -> str | None:
        return self._token if self._gate.is_set() else None

    async def token(self) -> str:
        await self._gate.wait()
        return self._token


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path, {"svc": {"roles": ["svc"]}}, policy=POLICY) as m:
        yield m


def task(text: str) -> agent_pb2.Task:
    return agent_pb2.Task(id=text, input=[agent_pb2.Part(text=text)])


async def renew(mesh: Mesh) -> None:
    """The bridge renews its certificate, as its renewer does at half its life."""
    renewer = mesh.nodes["bridge"].renewer
    assert renewer is not None
    await renewer.renew()


def gated_channels(mesh: Mesh) -> tuple[MeshChannels, list[GatedTokens], asyncio.Event]:
    """The bridge's channels to svc whose tokens wait for ``gate``; ``made`` holds one source per certificate."""
    gate = asyncio.Event()
    made: list[GatedTokens] = []

    def steps(target: str, files: IdentityFiles) -> ClientSteps:
        made.append(GatedTokens(mesh, files, gate))
        return ClientSteps("bridge", target, made[-1])

    channels = MeshChannels(mesh.nodes["bridge"].identity, {"svc": mesh.config.agent("svc").address}, steps=steps)
    return channels, made, gate


async def test_a_call_waiting_for_its_token_goes_out_on_the_connection_that_replaced_its_own(mesh: Mesh) -> None:
    channels, made, gate = gated_channels(mesh)
    try:
        stub = agent_pb2_grpc.AgentStub(channels.channel("svc"))
        waiting = stub.Invoke(task("first"), timeout=10)  # deferred: its token has not arrived
        await asyncio.sleep(0)
        assert not waiting.done()
        await renew(mesh)
        second = stub.Invoke(task("second"), timeout=10)  # the new connection: the first one is retired
        assert len(made) == 2 and made[0].thumbprint != made[1].thumbprint
        gate.set()
        assert (await second).output[0].text.startswith("svc: ")
        result = await waiting  # was: UNKNOWN "Channel is closed."
        assert result.output[0].text.startswith("svc: ")
        assert await waiting.code() == grpc.StatusCode.OK
    finally:
        await channels.close()


async def test_two_renewals_while_a_stream_waits(mesh: Mesh) -> None:
    """The connection is replaced twice before the token comes; the stream starts on the last one."""
    channels, made, gate = gated_channels(mesh)
    try:
        channel = channels.channel("svc")
        stream = agent_pb2_grpc.AgentStub(channel).InvokeStream(task("s"))
        for _ in range(2):
            await renew(mesh)
            channel.get_state()  # anything that asks for the current connection retires the old one
        assert len({t.thumbprint for t in made}) == 3
        gate.set()
        assert [ev.progress async for ev in stream] == ["step 0", "step 1", "step 2"]
        assert await stream.code() == grpc.StatusCode.OK
    finally:
        await channels.close()


async def test_a_member_whose_connection_is_replaced_while_its_first_call_waits(mesh: Mesh) -> None:
    """A real member: its own token source (one per certificate, fetched from the control plane)."""
    bridge = mesh.nodes["bridge"]
    stub = bridge.stub("svc", agent_pb2_grpc.AgentStub)
    assert (await stub.Invoke(task("before"), timeout=10)).output  # the steady state
    renewer = bridge.renewer
    assert renewer is not None
    renewer.on_renewed, on_renewed = None, renewer.on_renewed  # no token fetched ahead of the calls
    try:
        await renewer.renew()
        waiting = stub.Invoke(task("first"), timeout=10)  # the first call after the renewal: deferred
        assert bridge.tokens.cached() is None
        await renewer.renew()  # renewed again before the first call went out
        calls = [stub.Invoke(task(f"next-{i}"), timeout=10) for i in range(3)]
        for call in (waiting, *calls):
            assert (await call).output[0].text.startswith("svc: ")
    finally:
        renewer.on_renewed = on_renewed
