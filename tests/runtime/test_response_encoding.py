"""The server span has the status the client saw even when the response cannot be serialised: the chain
serialises a unary response itself, inside the call (grpc.aio would do it after the chain had ended the
span with OK while the client got UNKNOWN). A handler that set another status returns no response, as in
grpc.aio. (Found by the issue 15 review.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


class Agent(agent_pb2_grpc.AgentServicer):
    def __init__(self, answer: str) -> None:
        self.answer = answer

    async def Invoke(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if self.answer == "good":
            return agent_pb2.TaskResult(task_id=request.id)
        if self.answer == "not-a-message":  # a handler bug: grpc cannot serialise it
            return "not a message"
        context.set_code(grpc.StatusCode.NOT_FOUND)  # a status set, no response: nothing to serialise
        context.set_details("no such task")
        return None


@pytest.mark.parametrize(("answer", "code"), [
    ("good", grpc.StatusCode.OK),
    ("not-a-message", grpc.StatusCode.UNKNOWN),
    ("status-set", grpc.StatusCode.NOT_FOUND),
])
async def test_the_server_span_has_the_status_the_client_saw(tmp_path: Path, answer: str,
                                                             code: grpc.StatusCode) -> None:
    sink = build_audit(AuditConfig(exporters=("jsonl",), jsonl_path=tmp_path / "audit.jsonl"), service_name="b")
    ca = new_ca(tmp_path)
    server = MeshServer(AgentIdentity(identity_dir(ca, tmp_path, "b"), TD),
                        interceptors=[ServerChain(AuditStage("b", sink), [PeerIdentityStage(PeerIdentityCache(TD))])])
    server.add(agent_pb2_grpc.add_AgentServicer_to_server, Agent(answer), "agentmesh.v1.Agent")
    port = await server.start()
    ch = raw_channel(f"127.0.0.1:{port}", "b", bundle=ca.bundle, cert_dir=identity_dir(ca, tmp_path, "a"))
    try:
        try:
            reply = await agent_pb2_grpc.AgentStub(ch).Invoke(task(), timeout=5)
            seen = grpc.StatusCode.OK
            assert reply.task_id == task().id
        except grpc.aio.AioRpcError as e:
            seen = e.code()
    finally:
        await ch.close()
        await server.stop(0)
        sink.shutdown(3)
    assert seen == code
    (span,) = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert span["attributes"]["rpc.response.status_code"] == code.name
    assert span["status"] == ("ERROR" if code == grpc.StatusCode.UNKNOWN else "OK")
