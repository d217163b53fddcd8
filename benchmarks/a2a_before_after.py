"""A2A task ownership, before and after issue 11: what one principal can do to another's tasks.

    git worktree add /tmp/before b48441d && cp -r examples/a2a /tmp/before/examples/
    PYTHONPATH=/tmp/before:/tmp/before/tests .venv/bin/python benchmarks/a2a_before_after.py   # before
    PYTHONPATH=.:tests .venv/bin/python benchmarks/a2a_before_after.py                          # after

One process, real sockets: a CA, the control plane, a MeshNode per member. The agent ``travel`` is a
stock a2a-sdk gRPC server (``class A2A(GrpcHandler): pass``, the three-line subclass the issue found
working) over ``examples/a2a/travel.py``; the policy lets members alice and bob call every A2AService
method. In each of N rounds alice creates a finished task and a waiting one; bob tries to read it, to
find it in ListTasks, to subscribe to and to cancel the waiting one. The owner's own get and cancel
are the control (they must succeed, so bob's refusals are the mesh's, not a broken harness).
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path
from typing import Any

import grpc
from a2a.server.request_handlers import DefaultRequestHandler, GrpcHandler
from a2a.server.tasks import InMemoryTaskStore
from a2a.types import a2a_pb2 as pb
from a2a.types import a2a_pb2_grpc
from google.protobuf import json_format
from meshkit import write_mesh

from agentmesh.configfile import load_config
from agentmesh.runtime.control import start_control
from agentmesh.runtime.node import MeshNode
from examples.a2a.travel import TravelExecutor


class A2A(GrpcHandler):  # type: ignore[misc]  # the "three-line subclass" of the issue
    pass


N = 20
POLICY = [{"name": "p", "to": ["travel"], "methods": ["/lf.a2a.v1.A2AService/*"], "roles": ["p"]}]


def msg(text: str, *, immediately: bool = False) -> pb.SendMessageRequest:
    request = pb.SendMessageRequest(message=pb.Message(message_id=uuid.uuid4().hex, role=pb.ROLE_USER,
                                                       parts=[pb.Part(text=text)]))
    request.configuration.return_immediately = immediately
    return request


async def ok(call: Any) -> bool:
    try:
        await call
    except grpc.aio.AioRpcError:
        return False
    return True


async def subscribed(stub: Any, task_id: str) -> bool:
    """Whether a subscription to ``task_id`` streams (its first event, or still open when its deadline ends)."""
    try:
        async for _ in stub.SubscribeToTask(pb.SubscribeToTaskRequest(id=task_id), timeout=0.5):
            return True
    except grpc.aio.AioRpcError as e:
        return e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    return False


async def main() -> None:
    root = Path(tempfile.mkdtemp())
    card = json_format.Parse(Path("examples/a2a/card.json").read_text(), pb.AgentCard())
    members = {"travel": {"descriptors": ["a2a.types.a2a_pb2"]}, "alice": {"roles": ["p"]}, "bob": {"roles": ["p"]}}
    config = load_config(write_mesh(root, members, policy=POLICY))
    control = await start_control(config)
    nodes = {n: MeshNode(config, n, check_every=0) for n in members}
    for node in nodes.values():
        await node.start(timeout=10)
    server = nodes["travel"].server(grace=0.2)
    servicer = A2A(DefaultRequestHandler(TravelExecutor(), InMemoryTaskStore(), card))
    server.add(a2a_pb2_grpc.add_A2AServiceServicer_to_server, servicer, "lf.a2a.v1.A2AService")
    await server.start(nodes["travel"].address)
    alice = a2a_pb2_grpc.A2AServiceStub(nodes["alice"].channels.channel("travel"))
    bob = a2a_pb2_grpc.A2AServiceStub(nodes["bob"].channels.channel("travel"))
    counts = dict.fromkeys(("owner get (control)", "bob get", "bob list sees", "bob subscribe", "bob cancel",
                            "owner cancel (control)"), 0)
    for _ in range(N):
        done = (await alice.SendMessage(msg("Lisbon"))).task
        counts["owner get (control)"] += await ok(alice.GetTask(pb.GetTaskRequest(id=done.id)))
        counts["bob get"] += await ok(bob.GetTask(pb.GetTaskRequest(id=done.id)))
        counts["bob list sees"] += done.id in {t.id for t in (await bob.ListTasks(pb.ListTasksRequest())).tasks}
        waiting = (await alice.SendMessage(msg("wait", immediately=True))).task
        counts["bob subscribe"] += await subscribed(bob, waiting.id)
        if await ok(bob.CancelTask(pb.CancelTaskRequest(id=waiting.id))):
            counts["bob cancel"] += 1
        else:
            counts["owner cancel (control)"] += await ok(alice.CancelTask(pb.CancelTaskRequest(id=waiting.id)))
    for k, v in counts.items():
        print(f"  {k:24s} {v}/{N}")
    await server.stop(0)
    for node in nodes.values():
        await node.close()
    await control.stop(0)


if __name__ == "__main__":
    asyncio.run(main())
