"""A whole mesh for integration tests: CA, identities, config file, control plane, agents on port 0."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from support import TD

from agentmesh.audit import AuditSink
from agentmesh.config import MeshConfig
from agentmesh.configfile import load_config
from agentmesh.context import current_call
from agentmesh.pki import CertificateAuthority, write_identity
from agentmesh.runtime.control import start_control
from agentmesh.runtime.node import MeshNode
from agentmesh.runtime.server import MeshServer
from agentmesh.tokens import TokenAuthority
from agentmesh.v1 import agent_pb2, agent_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RelayAgent(agent_pb2_grpc.AgentServicer):
    """Reports who called (peer, principal, roles, chain); forwards to task.metadata["next"] if set."""

    def __init__(self, node: MeshNode) -> None:
        self.node = node
        self.calls = 0

    async def Invoke(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> agent_pb2.TaskResult:
        self.calls += 1
        call = current_call()
        out = [agent_pb2.Part(text=f"{self.node.name}: peer={call.peer_spiffe_id} principal={call.principal} "
                                   f"roles={','.join(call.roles)} chain={','.join(call.chain)}")]
        nxt = request.metadata.get("next")
        if nxt:
            rest = [n for n in nxt.split(",")[1:] if n]
            onward = agent_pb2.Task(id=request.id, input=request.input, metadata={"next": ",".join(rest)})
            res = await self.node.stub(nxt.split(",")[0], agent_pb2_grpc.AgentStub).Invoke(onward)
            out.extend(res.output)
        return agent_pb2.TaskResult(task_id=request.id, status=agent_pb2.TASK_STATUS_COMPLETED, output=out)

    async def InvokeStream(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        self.calls += 1
        for i in range(3):
            yield agent_pb2.TaskEvent(task_id=request.id, progress=f"step {i}")

    async def Describe(self, request: agent_pb2.DescribeRequest,
                       context: grpc.aio.ServicerContext) -> agent_pb2.AgentCard:
        return agent_pb2.AgentCard(name=self.node.name, spiffe_id=str(self.node.spiffe_id))


@dataclass
class Mesh:
    root: Path
    config: MeshConfig
    ca: CertificateAuthority
    authority: TokenAuthority
    nodes: dict[str, MeshNode] = field(default_factory=dict)
    agents: dict[str, Any] = field(default_factory=dict)
    servers: list[MeshServer] = field(default_factory=list)
    control_sink: AuditSink | None = None
    control: Any = None  # the running ControlPlane

    @property
    def audit_path(self) -> Path:
        assert self.config.audit.jsonl_path is not None
        return self.config.audit.jsonl_path

    def client_token(self, sub: str = "alice@example.org", roles: Sequence[str] = ("client",), *,
                     scope: str | None = None, **kw: Any) -> str:
        extra = {**kw.pop("extra", {}), **({"scope": scope} if scope is not None else {})}
        return self.authority.issue(sub=sub, roles=list(roles), audience=self.config.tokens.audience,
                                    ttl=kw.pop("ttl", 600), extra=extra, **kw)

    async def txn(self, subject_token: str, *, via: str = "bridge", scope: str = "") -> str:
        """A transaction token for ``subject_token``'s principal, exchanged by member ``via`` (the member
        that must then make the delegated call: it is the first hop)."""
        return (await self.nodes[via].exchange(subject_token, scope=scope, route="test")).token

    def agent_token(self, name: str) -> str:
        """A token bound to ``name``'s certificate, as the control plane would issue it."""
        node = self.nodes[name]
        roles = self.config.agents[name].roles if name in self.config.agents else ()
        return self.authority.issue(sub=str(node.spiffe_id), roles=list(roles),
                                    audience=self.config.tokens.audience, ttl=300,
                                    cnf_thumbprint=node.identity.thumbprint)

    def flush(self) -> None:
        for node in self.nodes.values():
            node.sink.force_flush(5)


def write_mesh(root: Path, agents: dict[str, dict[str, Any]], *, leaf_ttl: float = 86400.0,
               **sections: Any) -> Path:
    """A CA, identities for every member (living ``leaf_ttl``), and mesh.yaml (agents on free ports)."""
    ca = CertificateAuthority.init(root / "ca", TD)
    names = [*agents, "bridge", "control", "outsider"]
    for name in names:
        write_identity(ca.issue(name, ttl=leaf_ttl, dns=["localhost"] if name == "bridge" else ()),
                       root / "identities" / name)
    doc: dict[str, Any] = {
        "trust_domain": TD,
        "ca": "ca",
        "identities": "identities",
        "agents": {n: {"address": f"127.0.0.1:{free_port()}", **spec} for n, spec in agents.items()},
        "control": {"address": f"127.0.0.1:{free_port()}"},
        "audit": {"exporters": ["jsonl"], "jsonl_path": "audit.jsonl"},
        **sections,
    }
    path = root / "mesh.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@contextlib.asynccontextmanager
async def running_mesh(root: Path, agents: dict[str, dict[str, Any]], *, serve: Sequence[str] | None = None,
                       clock: Any = None, servicer: Callable[[MeshNode], Any] = RelayAgent,
                       leaf_ttl: float = 86400.0, **sections: Any) -> AsyncIterator[Mesh]:
    path = write_mesh(root, agents, leaf_ttl=leaf_ttl, **sections)
    config = load_config(path)
    control = await start_control(config)
    control_sink = control.sink
    ca = CertificateAuthority.load(config.ca_dir)
    authority = TokenAuthority.load(config.ca_dir, issuer=config.tokens.issuer)
    mesh = Mesh(root, config, ca, authority, control_sink=control_sink, control=control)
    try:
        for name in ([*agents, "bridge"] if serve is None else serve):
            node = MeshNode(config, name, check_every=0, **({"clock": clock} if clock else {}))
            mesh.nodes[name] = node
            await node.start(timeout=10)
            if name in agents:
                agent = servicer(node)
                server = node.server(grace=0.2)
                server.add(agent_pb2_grpc.add_AgentServicer_to_server, agent, "agentmesh.v1.Agent")
                await server.start(node.address)
                mesh.agents[name] = agent
                mesh.servers.append(server)
        yield mesh
    finally:
        for server in mesh.servers:
            await server.stop(0)
        for node in mesh.nodes.values():
            await node.close()
        await mesh.control.stop(0)  # (a test may have replaced it)
        mesh.control.sink.shutdown(2)
        if mesh.control is not control:
            control_sink.shutdown(2)


async def renew_quietly(node: MeshNode) -> None:
    """A certificate renewal as the member's renewer makes it, but no token fetched ahead of the next call."""
    renewer = node.renewer
    assert renewer is not None
    renewer.on_renewed, on_renewed = None, renewer.on_renewed
    try:
        await renewer.renew()
    finally:
        renewer.on_renewed = on_renewed
