"""Serving behaviour that is not about identity: drain on stop, and audit.required failing closed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from support import TD, identity_dir, new_ca, raw_channel, task

from agentmesh.audit import build_audit
from agentmesh.config import AuditConfig
from agentmesh.interceptors.audit import AuditStage
from agentmesh.interceptors.base import ServerChain
from agentmesh.interceptors.identity import PeerIdentityCache, PeerIdentityStage
from agentmesh.runtime.credentials import AgentIdentity
from agentmesh.runtime.server import MeshServer
from agentmesh.v1 import agent_pb2, agent_pb2_grpc


class SlowAgent(agent_pb2_grpc.AgentServicer):
    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def Invoke(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> agent_pb2.TaskResult:
        self.entered.set()
        await self.release.wait()
        return agent_pb2.TaskResult(task_id=request.id, status=agent_pb2.TASK_STATUS_COMPLETED)


async def test_stop_drains_in_flight_calls_and_refuses_new_ones(tmp_path: Path) -> None:
    ca = new_ca(tmp_path)
    server = MeshServer(AgentIdentity(identity_dir(ca, tmp_path, "b"), TD),
                        interceptors=[ServerChain(AuditStage("b", None), [PeerIdentityStage(PeerIdentityCache(TD))])])
    agent = SlowAgent()
    server.add(agent_pb2_grpc.add_AgentServicer_to_server, agent, "agentmesh.v1.Agent")
    port = await server.start()
    ch = raw_channel(f"127.0.0.1:{port}", "b", bundle=ca.bundle, cert_dir=identity_dir(ca, tmp_path, "a"))
    try:
        in_flight = asyncio.ensure_future(agent_pb2_grpc.AgentStub(ch).Invoke(task(), timeout=10))
        await agent.entered.wait()
        stopping = asyncio.ensure_future(server.stop(grace=10))
        await asyncio.sleep(0)  # let stop() begin: it stops accepting calls first
        agent.release.set()
        result = await in_flight
        assert result.status == agent_pb2.TASK_STATUS_COMPLETED
        await stopping
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await agent_pb2_grpc.AgentStub(ch).Invoke(task(), timeout=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await ch.close()


async def test_audit_required_fails_closed_when_the_sink_cannot_write(tmp_path: Path) -> None:
    ca = new_ca(tmp_path)
    sink = build_audit(AuditConfig(exporters=("jsonl",), jsonl_path=Path("/dev/full"), required=True),
                       service_name="b")
    server = MeshServer(AgentIdentity(identity_dir(ca, tmp_path, "b"), TD),
                        interceptors=[ServerChain(AuditStage("b", sink, required=True),
                                                  [PeerIdentityStage(PeerIdentityCache(TD))])])
    agent = SlowAgent()
    agent.release.set()
    server.add(agent_pb2_grpc.add_AgentServicer_to_server, agent, "agentmesh.v1.Agent")
    port = await server.start()
    ch = raw_channel(f"127.0.0.1:{port}", "b", bundle=ca.bundle, cert_dir=identity_dir(ca, tmp_path, "a"))
    try:
        stub = agent_pb2_grpc.AgentStub(ch)
        await stub.Invoke(task(), timeout=5)  # the sink has not failed yet
        sink.force_flush(5)  # the export of that span fails: the disk is full
        assert not sink.available()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Invoke(task(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "audit" in err.value.details()
        assert sink.stats["export_failures"] >= 1
    finally:
        await ch.close()
        await server.stop(0)
        sink.shutdown(2)
