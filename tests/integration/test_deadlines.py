"""No deadline the caller did not ask for (issue 16): a mesh call without a timeout has none, as on plain gRPC;
one with a timeout keeps it; a served call's remaining deadline bounds the calls it makes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from meshkit import Mesh, running_mesh
from support import task

from agentmesh.runtime.node import MeshNode
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

AGENTS = {"front": {"roles": ["front"]}, "back": {"roles": ["back"]}}
POLICY = [{"name": "callers", "action": "allow", "to": ["front", "back"], "from": ["bridge", "front"]}]


class Deadlines(agent_pb2_grpc.AgentServicer):
    """Reports the time it has left (None: no deadline); with input "onward", also the next agent's."""

    def __init__(self, node: MeshNode) -> None:
        self.node = node

    async def Invoke(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> agent_pb2.TaskResult:
        out = [agent_pb2.Part(text=json.dumps(context.time_remaining()))]
        if request.input and request.input[0].text == "onward":
            res = await self.node.stub("back", agent_pb2_grpc.AgentStub).Invoke(task("report"))
            out.extend(res.output)
        return agent_pb2.TaskResult(task_id=request.id, output=out)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path, AGENTS, servicer=Deadlines, policy=POLICY) as m:
        yield m


def left(res: agent_pb2.TaskResult) -> list[float | None]:
    return [json.loads(p.text) for p in res.output]


async def test_a_call_without_a_timeout_has_no_deadline_on_any_hop(mesh: Mesh) -> None:
    stub = mesh.nodes["bridge"].stub("front", agent_pb2_grpc.AgentStub)
    assert left(await stub.Invoke(task("onward"))) == [None, None]  # plain gRPC: no deadline, none invented


async def test_a_timeout_is_kept_and_bounds_the_calls_made_while_serving(mesh: Mesh) -> None:
    stub = mesh.nodes["bridge"].stub("front", agent_pb2_grpc.AgentStub)
    front, back = left(await stub.Invoke(task("onward"), timeout=40))
    assert front is not None and back is not None
    assert 35 < front <= 40 and 35 < back <= front + 0.05  # past the old 30 s default; bounded by the served call
