"""Task owners in a real redis-server (tests/redis_server.py), shared by two replicas of an A2A agent;
skipped with the reason when redis-server is not installed (failed under CI=true). Nothing here sleeps."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from conftest import a2a_mesh
from redis_server import free_port

from agentmesh.a2a.ownership import RedisTaskOwners, build_task_owners
from agentmesh.config import RateLimitConfig
from agentmesh.errors import Unavailable

pb = pytest.importorskip("a2a.types.a2a_pb2", reason="the a2a-sdk (agentmesh[a2a]) is not installed")


@pytest.fixture
async def owners(redis_url: str) -> AsyncIterator[RedisTaskOwners]:
    store = RedisTaskOwners(redis_url, "travel", ttl=100)
    yield store
    await store.aclose()


async def test_first_claim_wins_and_keys_expire(owners: RedisTaskOwners, raw: aioredis.Redis) -> None:
    assert await owners.owners(["t1"], "alice") == [None]
    assert await owners.claim("t1", "alice") == "alice"
    assert await owners.claim("t1", "bob") == "alice"
    assert await owners.owners(["t1", "t2"], "bob") == ["alice", None]
    key = owners.key("t1")
    assert key == "agentmesh:a2a:{travel}:t1"
    assert await raw.get(key) == "alice" and 0 < await raw.ttl(key) <= 100


async def test_only_the_owner_keeps_a_task_alive(owners: RedisTaskOwners, raw: aioredis.Redis) -> None:
    await owners.claim("t1", "alice")
    key = owners.key("t1")
    await raw.expire(key, 5)
    await owners.owners(["t1"], "mallory")
    assert await raw.ttl(key) <= 5  # a probe by someone else is not a touch
    await owners.owners(["t1"], "alice")
    assert await raw.ttl(key) > 5
    await raw.delete(key)  # expired
    assert await owners.owners(["t1"], "alice") == [None]


async def test_agents_do_not_share_owners(redis_url: str) -> None:
    travel, hotel = RedisTaskOwners(redis_url, "travel"), RedisTaskOwners(redis_url, "hotel")
    try:
        await travel.claim("t1", "alice")
        assert await hotel.owners(["t1"], "alice") == [None]
    finally:
        await travel.aclose()
        await hotel.aclose()


async def test_redis_down_fails_closed() -> None:
    store = build_task_owners(RateLimitConfig(backend=f"redis://127.0.0.1:{free_port()}/0", failure_mode="open"),
                              None, agent="travel")
    try:
        with pytest.raises(Unavailable, match="task-owner store unavailable"):
            await store.owners(["t1"], "alice")
        with pytest.raises(Unavailable):
            await store.claim("t1", "alice")
    finally:
        await store.aclose()


def message(text: str, task_id: str = "") -> Any:
    return pb.Message(message_id=str(uuid.uuid4()), role=pb.ROLE_USER, parts=[pb.Part(text=text)], task_id=task_id)


async def test_two_replicas_share_task_owners_through_redis(tmp_path: Path, redis_url: str) -> None:
    async with a2a_mesh(tmp_path, replicas=2, backend=redis_url, a2a={"task_ttl": "1h"}) as mesh:
        res = await mesh.stub("alpha", replica=0).SendMessage(pb.SendMessageRequest(
            message=message("wait in Lisbon"), configuration=pb.SendMessageConfiguration(return_immediately=True)))
        task_id = res.task.id
        a1, b1 = mesh.stub("alpha", replica=1), mesh.stub("beta", replica=1)
        assert (await a1.GetTask(pb.GetTaskRequest(id=task_id))).id == task_id  # the owner, on the other replica
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await b1.GetTask(pb.GetTaskRequest(id=task_id))
        assert (e.value.code(), e.value.details()) == (grpc.StatusCode.NOT_FOUND, "Task not found")
        assert [t.id for t in (await a1.ListTasks(pb.ListTasksRequest())).tasks] == [task_id]
        assert not (await b1.ListTasks(pb.ListTasksRequest())).tasks
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await b1.CancelTask(pb.CancelTaskRequest(id=task_id))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        await mesh.stub("alpha", replica=0).CancelTask(pb.CancelTaskRequest(id=task_id))


async def test_replicas_with_memory_owners_refuse_what_they_did_not_see(tmp_path: Path) -> None:
    """The contrast: without a shared store, the other replica does not know the owner, and fails closed."""
    async with a2a_mesh(tmp_path, replicas=2) as mesh:
        res = await mesh.stub("alpha", replica=0).SendMessage(pb.SendMessageRequest(message=message("Lisbon")),
                                                              timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await mesh.stub("alpha", replica=1).GetTask(pb.GetTaskRequest(id=res.task.id))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert (await mesh.stub("alpha", replica=0).GetTask(pb.GetTaskRequest(id=res.task.id))).id == res.task.id


async def test_a_replica_without_its_redis_answers_unavailable(tmp_path: Path) -> None:
    async with a2a_mesh(tmp_path, backend=f"redis://127.0.0.1:{free_port()}/0") as mesh:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await mesh.stub("alpha").GetTask(pb.GetTaskRequest(id=str(uuid.uuid4())))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert e.value.details() == "task-owner store unavailable"
