"""An a2a-sdk AgentExecutor served as a mesh agent with no subclass (agentmesh.a2a.adapter): the
stock a2a-sdk gRPC client over a mesh channel, the verified caller in the SDK's request context,
tasks kept apart per principal by the SDK's own store, and skill-level policy."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from a2a.client.transports.grpc import GrpcTransport
from a2a.helpers.proto_helpers import new_text_message
from a2a.types import a2a_pb2, a2a_pb2_grpc
from meshkit import write_mesh

from agentmesh.configfile import load_config
from agentmesh.errors import ConfigError
from agentmesh.runtime.app import servicer_for
from agentmesh.runtime.control import start_control
from agentmesh.runtime.node import MeshNode

EXAMPLE = Path(__file__).parents[2] / "examples" / "a2a"
CARD = EXAMPLE / "card.json"
A2A = "/lf.a2a.v1.A2AService/"


@contextlib.asynccontextmanager
async def a2a_mesh(root: Path, policy: list[dict[str, Any]]) -> AsyncIterator[dict[str, MeshNode]]:
    path = write_mesh(root, {
        "travel": {"app": "examples.a2a.travel:TravelExecutor", "a2a": {"card": str(CARD)}},
        "alice": {"roles": ["planner"]},
        "bob": {"roles": ["planner"]},
    }, policy=policy)
    config = load_config(path)
    control = await start_control(config)
    nodes: dict[str, MeshNode] = {}
    server = None
    try:
        for name in ("travel", "alice", "bob"):
            nodes[name] = MeshNode(config, name, check_every=0)
            await nodes[name].start(timeout=10)
        servicer, regs = servicer_for(config.agents["travel"], nodes["travel"])
        server = nodes["travel"].server(grace=0.2)
        for reg in regs:
            server.add(reg.add, servicer, reg.service)
        await server.start(nodes["travel"].address)
        yield nodes
    finally:
        if server is not None:
            await server.stop(0)
        for node in nodes.values():
            await node.close()
        await control.stop(0)
        control.sink.shutdown(2)


def send(text: str, *, skill: str | None = None, task_id: str = "") -> a2a_pb2.SendMessageRequest:
    message = new_text_message(text, task_id=task_id or None, role=a2a_pb2.ROLE_USER)
    request = a2a_pb2.SendMessageRequest(message=message)
    if skill is not None:
        request.metadata.update({"skill": skill})
    return request


ALLOW_ALL = [{"name": "planners", "to": ["travel"], "methods": [A2A + "*"], "roles": ["planner"]}]


async def test_stock_client_over_a_mesh_channel_with_the_verified_caller(tmp_path: Path) -> None:
    async with a2a_mesh(tmp_path, ALLOW_ALL) as nodes:
        transport = GrpcTransport(nodes["alice"].channels.channel("travel"), None)
        reply = await transport.send_message(send("three days in Lisbon"))
        task = reply.task
        assert task.status.state == a2a_pb2.TASK_STATE_COMPLETED
        alice = str(nodes["alice"].spiffe_id)
        # the executor saw the caller the mesh verified, through the SDK's own request context
        assert task.artifacts[0].parts[0].text == f"itinerary for {alice}: three days in Lisbon"
        got = await transport.get_task(a2a_pb2.GetTaskRequest(id=task.id))
        assert got.id == task.id
        events = [e async for e in transport.send_message_streaming(send("a weekend in Porto"))]
        assert events and events[-1].WhichOneof("payload") in ("status_update", "task")
        listed = await transport.list_tasks(a2a_pb2.ListTasksRequest())
        assert {t.id for t in listed.tasks} >= {task.id}
        # the SDK closes the channel it was given when done: the node's connection stays for other calls
        async with GrpcTransport(nodes["alice"].channels.channel("travel"), None) as other:
            await other.get_task(a2a_pb2.GetTaskRequest(id=task.id))
        assert (await transport.get_task(a2a_pb2.GetTaskRequest(id=task.id))).id == task.id


async def test_tasks_are_kept_apart_per_verified_principal(tmp_path: Path) -> None:
    async with a2a_mesh(tmp_path, ALLOW_ALL) as nodes:
        alice = a2a_pb2_grpc.A2AServiceStub(nodes["alice"].channels.channel("travel"))
        bob = a2a_pb2_grpc.A2AServiceStub(nodes["bob"].channels.channel("travel"))
        task = (await alice.SendMessage(send("Lisbon"))).task
        # the owner reads it; the other principal, allowed to call the agent, gets NOT_FOUND
        assert (await alice.GetTask(a2a_pb2.GetTaskRequest(id=task.id))).id == task.id
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await bob.GetTask(a2a_pb2.GetTaskRequest(id=task.id))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert task.id not in {t.id for t in (await bob.ListTasks(a2a_pb2.ListTasksRequest())).tasks}
        assert task.id in {t.id for t in (await alice.ListTasks(a2a_pb2.ListTasksRequest())).tasks}


async def test_skill_level_policy(tmp_path: Path) -> None:
    policy = [
        {"name": "read-tasks", "to": ["travel"], "methods": [A2A + "GetTask", A2A + "ListTasks"],
         "roles": ["planner"]},
        {"name": "plan-only", "to": ["travel"], "methods": [A2A + "SendMessage"], "roles": ["planner"],
         "skills": ["plan-trip"]},
    ]
    async with a2a_mesh(tmp_path, policy) as nodes:
        alice = a2a_pb2_grpc.A2AServiceStub(nodes["alice"].channels.channel("travel"))
        ok = await alice.SendMessage(send("Lisbon", skill="plan-trip"))
        assert ok.task.status.state == a2a_pb2.TASK_STATE_COMPLETED
        for attack in (send("Lisbon", skill="book-flight"), send("Lisbon")):  # another skill; none named
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await alice.SendMessage(attack)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        two = send("Lisbon", skill="plan-trip")
        two.message.metadata.update({"skill": "book-flight"})
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await alice.SendMessage(two)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(("rule", "error"), [
    ({"skills": ["book-flights"]}, "'book-flights' is not a skill of travel"),
    ({"skills": ["plan-trip"], "methods": [A2A + "GetTask"]}, "names neither"),
])
def test_a_skill_rule_that_can_never_match_fails_config_load(tmp_path: Path, rule: dict[str, Any],
                                                             error: str) -> None:
    path = write_mesh(tmp_path, {"travel": {"app": "examples.a2a.travel:executor", "a2a": {"card": str(CARD)}}},
                      policy=[{"name": "r", "to": ["travel"], **rule}])
    with pytest.raises(ConfigError, match=error):
        from agentmesh.policy import PolicyEngine

        config = load_config(path)
        PolicyEngine(config.policy, config.trust_domain)


def test_a_card_that_is_not_an_agent_card_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "card.json"
    bad.write_text('{"name": "x", "skils": []}')
    path = write_mesh(tmp_path / "m", {"travel": {"app": "examples.a2a.travel:executor", "a2a": {"card": str(bad)}}})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "agents.travel.a2a.card" in str(e.value) and "skils" in str(e.value) and "\n" not in str(e.value)
