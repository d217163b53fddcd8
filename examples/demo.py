"""`make demo`: two agents on a fresh CA say hello over mutual TLS, and an imposter is refused."""

from __future__ import annotations

import asyncio
import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
import tempfile
from pathlib import Path

import grpc

from agentmesh.context import current_call
from agentmesh.interceptors.audit import AuditStage
from agentmesh.interceptors.identity import PeerIdentityCache, PeerIdentityStage
from agentmesh.pki import CertificateAuthority, write_identity
from agentmesh.runtime.channel import MeshChannels
from agentmesh.runtime.credentials import AgentIdentity
from agentmesh.runtime.server import MeshServer
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

TD = "demo.agentmesh.local"


class Greeter(agent_pb2_grpc.AgentServicer):
    async def Invoke(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> agent_pb2.TaskResult:
        caller = current_call().peer_spiffe_id
        return agent_pb2.TaskResult(task_id=request.id, status=agent_pb2.TASK_STATUS_COMPLETED,
                                    output=[agent_pb2.Part(text=f"hello {caller}, I am greeter")])


async def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="agentmesh-demo-"))
    ca = CertificateAuthority.init(work / "ca", TD)
    for name in ("greeter", "caller"):
        write_identity(ca.issue(name), work / name)
    rogue = CertificateAuthority.init(work / "rogue-ca", TD)
    write_identity(rogue.issue("caller"), work / "imposter")
    print(f"CA for spiffe://{TD} in {work / 'ca'}; onboarded greeter and caller")

    identity = AgentIdentity(work / "greeter", TD)
    server = MeshServer(identity, interceptors=[AuditStage("greeter", None), PeerIdentityStage(PeerIdentityCache(TD))])
    server.add(agent_pb2_grpc.add_AgentServicer_to_server, Greeter(), "agentmesh.v1.Agent")
    port = await server.start("127.0.0.1:0")
    address = f"127.0.0.1:{port}"
    try:
        channels = MeshChannels(AgentIdentity(work / "caller", TD), {"greeter": address})
        reply = await channels.stub("greeter", agent_pb2_grpc.AgentStub).Invoke(
            agent_pb2.Task(id="1", input=[agent_pb2.Part(text="hi")]), timeout=5)
        print(f"caller -> greeter over mTLS: {reply.output[0].text}")
        await channels.close()

        imposter = MeshChannels(AgentIdentity(work / "imposter", TD), {"greeter": address})
        try:
            await imposter.stub("greeter", agent_pb2_grpc.AgentStub).Invoke(agent_pb2.Task(id="2"), timeout=5)
            raise SystemExit("FAIL: the imposter got through")
        except grpc.aio.AioRpcError as e:
            print(f"imposter (rogue CA, same trust domain) -> greeter: refused ({e.code().name})")
        await imposter.close()
    finally:
        await server.stop(0)


if __name__ == "__main__":
    asyncio.run(main())
