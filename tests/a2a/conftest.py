"""A mesh serving a STOCK a2a-sdk gRPC server (no agentmesh adapter) and members that call it.

``travel`` is ``GrpcHandler(DefaultRequestHandler(examples.a2a.travel:executor, InMemoryTaskStore(), card))``
behind ``node.server()`` (the whole server chain), on port 0; its replicas share one task store (as replicas
sharing a database would). ``alpha`` and ``beta`` call it as themselves; ``bridge`` calls it for external
principals (delegated). Each replica has its own client members (``mesh.stub("alpha", replica=1)``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from meshkit import write_mesh

from agentmesh.config import MeshConfig
from agentmesh.configfile import load_config
from agentmesh.runtime.control import ControlPlane, start_control
from agentmesh.runtime.node import MeshNode
from agentmesh.runtime.server import MeshServer
from agentmesh.tokens import TokenAuthority

a2a_pb2 = pytest.importorskip("a2a.types.a2a_pb2", reason="the a2a-sdk (agentmesh[a2a]) is not installed")
from a2a.server.request_handlers import DefaultRequestHandler, GrpcHandler  # noqa: E402
from a2a.server.tasks import InMemoryPushNotificationConfigStore, InMemoryTaskStore  # noqa: E402
from a2a.types import a2a_pb2_grpc  # noqa: E402

from agentmesh.a2a.sdk import A2A_SERVICE, card_from_json  # noqa: E402
from examples.a2a.travel import executor  # noqa: E402

CARD = Path(__file__).parents[2] / "examples" / "a2a" / "card.json"
MEMBERS = ("alpha", "beta", "bridge")
POLICY = [
    {"name": "members", "action": "allow", "to": ["travel"], "from": ["alpha", "beta"]},
    {"name": "clients", "action": "allow", "to": ["travel"], "roles": ["client"], "via": ["bridge"]},
]


class A2A(GrpcHandler):
    """The stock a2a-sdk gRPC servicer, nothing added."""


def stock_handler(store: Any) -> A2A:
    card = card_from_json(CARD.read_text(), str(CARD))
    card.capabilities.push_notifications = True  # so the push-config methods reach the task checks
    return A2A(DefaultRequestHandler(executor, store, card, push_config_store=InMemoryPushNotificationConfigStore()))


@dataclass
class A2AMesh:
    config: MeshConfig
    control: ControlPlane
    authority: TokenAuthority
    replicas: list[MeshNode] = field(default_factory=list)
    servers: list[MeshServer] = field(default_factory=list)
    clients: list[dict[str, MeshNode]] = field(default_factory=list)  # per replica: member -> node

    def stub(self, member: str, *, replica: int = 0) -> Any:
        return a2a_pb2_grpc.A2AServiceStub(self.clients[replica][member].channels.channel("travel"))

    def client_token(self, sub: str) -> str:
        return self.authority.issue(sub=sub, roles=["client"], audience=self.config.tokens.audience, ttl=600)

    async def txn(self, sub: str, *, replica: int = 0) -> str:
        """A transaction token for external principal ``sub``, exchanged by the bridge."""
        bridge = self.clients[replica]["bridge"]
        return (await bridge.exchange(self.client_token(sub), route="test")).token


def _with_address(config: MeshConfig, agent: str, address: str) -> MeshConfig:
    agents = {**config.agents, agent: dataclasses.replace(config.agents[agent], address=address)}
    return dataclasses.replace(config, agents=agents)


@contextlib.asynccontextmanager
async def a2a_mesh(root: Path, *, replicas: int = 1, backend: str = "memory",
                   a2a: dict[str, Any] | None = None) -> AsyncIterator[A2AMesh]:
    travel: dict[str, Any] = {"roles": ["travel"], **({"a2a": {"card": str(CARD), **a2a}} if a2a else {})}
    agents = {"travel": travel, "alpha": {"roles": ["planner"]}, "beta": {"roles": ["planner"]}}
    config = load_config(write_mesh(root, agents, policy=POLICY, rate_limits={"backend": backend}))
    control = await start_control(config, address="127.0.0.1:0")
    config = dataclasses.replace(config, control=dataclasses.replace(config.control,
                                                                     address=f"127.0.0.1:{control.port}"))
    mesh = A2AMesh(config, control, TokenAuthority.load(config.ca_dir, issuer=config.tokens.issuer))
    store = InMemoryTaskStore()  # one task store behind every replica
    try:
        for _ in range(replicas):
            node = MeshNode(config, "travel", check_every=0)
            mesh.replicas.append(node)
            await node.start(timeout=10)
            server = node.server(grace=0.2)
            server.add(a2a_pb2_grpc.add_A2AServiceServicer_to_server, stock_handler(store), A2A_SERVICE)
            mesh.servers.append(server)
            port = await server.start("127.0.0.1:0")
            at = _with_address(config, "travel", f"127.0.0.1:{port}")
            mesh.clients.append({})
            for member in MEMBERS:
                client = MeshNode(at, member, check_every=0)
                mesh.clients[-1][member] = client
                await client.start(timeout=10)
        yield mesh
    finally:
        for server in mesh.servers:
            await server.stop(0)
        for node in [*mesh.replicas, *(n for c in mesh.clients for n in c.values())]:
            await node.close()
        await control.stop(0)
        control.sink.shutdown(2)
