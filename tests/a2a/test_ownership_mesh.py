"""A stock a2a-sdk server behind the mesh: each principal sees, cancels, continues and subscribes to its
own tasks only. Every attack is paired with the same request by the owner, which succeeds, and its answer
is compared with the answer for a task id that does not exist: they are the same (existence does not leak).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import A2AMesh, a2a_mesh
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agentmesh.interceptors.client import delegating

pb = pytest.importorskip("a2a.types.a2a_pb2", reason="the a2a-sdk (agentmesh[a2a]) is not installed")


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[A2AMesh]:
    async with a2a_mesh(tmp_path) as m:
        yield m


def message(text: str, task_id: str = "") -> Any:
    return pb.Message(message_id=str(uuid.uuid4()), role=pb.ROLE_USER, parts=[pb.Part(text=text)], task_id=task_id)


async def start_task(stub: Any, text: str = "wait in Lisbon") -> str:
    """A task that stays working (``wait``) until it is cancelled; its id."""
    res = await stub.SendMessage(pb.SendMessageRequest(
        message=message(text), configuration=pb.SendMessageConfiguration(return_immediately=True)))
    assert res.WhichOneof("payload") == "task"
    return str(res.task.id)


def answer(err: grpc.aio.AioRpcError, task_id: str, unknown: str) -> tuple[Any, ...]:
    """What a caller learns from a refusal: code, message and ErrorInfo (ids made the same)."""
    status = rpc_status.from_call(err)
    infos = []
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        assert detail.Unpack(info)
        infos.append((info.reason, info.domain))
    return err.code(), (err.details() or "").replace(task_id, unknown), tuple(infos)


async def refused(call: Callable[[str], Awaitable[Any]], task_id: str) -> tuple[Any, ...]:
    """The answer to ``call(task_id)``, which must be NOT_FOUND, and the same as for an id that does not exist."""
    unknown = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as attack:
        await call(task_id)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await call(unknown)
    assert attack.value.code() == grpc.StatusCode.NOT_FOUND
    assert answer(attack.value, task_id, unknown) == answer(missing.value, unknown, unknown)
    return answer(attack.value, task_id, unknown)


async def first_event(stub: Any, task_id: str) -> Any:
    call = stub.SubscribeToTask(pb.SubscribeToTaskRequest(id=task_id))
    try:
        return await asyncio.wait_for(call.read(), 10)
    finally:
        call.cancel()


def push_config(task_id: str) -> Any:
    return pb.TaskPushNotificationConfig(task_id=task_id, id="cb", url="https://hooks.example.org/cb")


async def test_another_principal_gets_not_found_for_every_method(mesh: A2AMesh) -> None:
    a, b = mesh.stub("alpha"), mesh.stub("beta")
    task_id = await start_task(a)

    # GetTask
    assert (await a.GetTask(pb.GetTaskRequest(id=task_id))).id == task_id
    code, text, info = await refused(lambda t: b.GetTask(pb.GetTaskRequest(id=t)), task_id)
    sdk_info = (("TASK_NOT_FOUND", "a2a-protocol.org"),)
    assert (code, text, info) == (grpc.StatusCode.NOT_FOUND, "Task not found", sdk_info)

    # SubscribeToTask
    assert (await first_event(a, task_id)).task.id == task_id
    await refused(lambda t: first_event(b, t), task_id)

    # the push-config methods
    assert (await a.CreateTaskPushNotificationConfig(push_config(task_id))).task_id == task_id
    await refused(lambda t: b.CreateTaskPushNotificationConfig(push_config(t)), task_id)
    get = pb.GetTaskPushNotificationConfigRequest
    assert (await a.GetTaskPushNotificationConfig(get(task_id=task_id, id="cb"))).url.startswith("https://hooks")
    await refused(lambda t: b.GetTaskPushNotificationConfig(get(task_id=t, id="cb")), task_id)
    listed = pb.ListTaskPushNotificationConfigsRequest
    assert [c.id for c in (await a.ListTaskPushNotificationConfigs(listed(task_id=task_id))).configs] == ["cb"]
    await refused(lambda t: b.ListTaskPushNotificationConfigs(listed(task_id=t)), task_id)
    delete = pb.DeleteTaskPushNotificationConfigRequest
    await refused(lambda t: b.DeleteTaskPushNotificationConfig(delete(task_id=t, id="cb")), task_id)
    await a.DeleteTaskPushNotificationConfig(delete(task_id=task_id, id="cb"))
    assert not (await a.ListTaskPushNotificationConfigs(listed(task_id=task_id))).configs

    # SendMessage continuing the task (the a2a-sdk's own answer for an id it does not have)
    code, text, _ = await refused(lambda t: b.SendMessage(pb.SendMessageRequest(message=message("more", t))),
                                  task_id)
    assert text.startswith("Task ") and text.endswith(" not found")  # (the id in it is the one named)
    await refused(lambda t: anext(aiter(b.SendStreamingMessage(pb.SendMessageRequest(message=message("more", t))))),
                  task_id)

    # CancelTask (last: it ends the task)
    await refused(lambda t: b.CancelTask(pb.CancelTaskRequest(id=t)), task_id)
    assert (await a.GetTask(pb.GetTaskRequest(id=task_id))).status.state == pb.TASK_STATE_WORKING  # untouched
    assert (await a.CancelTask(pb.CancelTaskRequest(id=task_id))).status.state == pb.TASK_STATE_CANCELED


async def test_sending_to_a_task_reaches_the_agent_for_its_owner_only(mesh: A2AMesh) -> None:
    a, b = mesh.stub("alpha"), mesh.stub("beta")
    done = await a.SendMessage(pb.SendMessageRequest(message=message("Lisbon")), timeout=10)
    task_id = done.task.id
    assert done.task.status.state == pb.TASK_STATE_COMPLETED
    # the owner's message reaches the agent, which answers it (a completed task takes no more messages)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await a.SendMessage(pb.SendMessageRequest(message=message("two more days", task_id)), timeout=10)
    assert e.value.code() != grpc.StatusCode.NOT_FOUND and "terminal state" in (e.value.details() or "")
    await refused(lambda t: b.SendMessage(pb.SendMessageRequest(message=message("two more days", t)), timeout=10),
                  task_id)

    # another's task as context (reference_task_ids) is refused too; the owner may use it
    def like(t: str) -> Any:
        m = message("the same for me")
        m.reference_task_ids.append(t)
        return pb.SendMessageRequest(message=m)

    with pytest.raises(grpc.aio.AioRpcError) as e:
        await b.SendMessage(like(task_id), timeout=10)
    assert (e.value.code(), e.value.details()) == (grpc.StatusCode.NOT_FOUND, "Task not found")
    assert (await a.SendMessage(like(task_id), timeout=10)).task.status.state == pb.TASK_STATE_COMPLETED


async def test_list_tasks_shows_each_principal_its_own(mesh: A2AMesh) -> None:
    a, b = mesh.stub("alpha"), mesh.stub("beta")
    mine = {await start_task(a, "Porto"), await start_task(a, "Faro")}
    theirs = {await start_task(b, "Braga")}
    for stub, own in ((a, mine), (b, theirs)):
        listed = await stub.ListTasks(pb.ListTasksRequest())
        assert {t.id for t in listed.tasks} == own
        assert listed.total_size == listed.page_size == len(own)
    # a small page: the agent pages over everyone's tasks; the mesh shows the caller's on each page
    seen: set[str] = set()
    token = ""
    for _ in range(5):
        listed = await b.ListTasks(pb.ListTasksRequest(page_size=1, page_token=token))
        seen |= {t.id for t in listed.tasks}
        assert listed.page_size == len(listed.tasks) <= 1
        token = listed.next_page_token
        if not token:
            break
    assert seen == theirs


async def test_a_streamed_task_belongs_to_its_caller(mesh: A2AMesh) -> None:
    a, b = mesh.stub("alpha"), mesh.stub("beta")
    events = [e async for e in a.SendStreamingMessage(pb.SendMessageRequest(message=message("Madeira")))]
    task_id = events[0].task.id
    assert events[-1].status_update.status.state == pb.TASK_STATE_COMPLETED
    got = await a.GetTask(pb.GetTaskRequest(id=task_id))
    assert "itinerary" in got.artifacts[0].parts[0].text
    await refused(lambda t: b.GetTask(pb.GetTaskRequest(id=t)), task_id)


async def test_delegated_principals_are_scoped_too(mesh: A2AMesh) -> None:
    """Through the bridge, the principal is the external caller: alice's task is not bob's, nor the members'."""
    bridge = mesh.stub("bridge")
    with delegating(await mesh.txn("alice@example.org")):
        task_id = await start_task(bridge, "wait in Lisbon")
        assert (await bridge.GetTask(pb.GetTaskRequest(id=task_id))).id == task_id
    with delegating(await mesh.txn("bob@example.org")):
        await refused(lambda t: bridge.GetTask(pb.GetTaskRequest(id=t)), task_id)
        assert not (await bridge.ListTasks(pb.ListTasksRequest())).tasks
    await refused(lambda t: mesh.stub("alpha").GetTask(pb.GetTaskRequest(id=t)), task_id)
    with delegating(await mesh.txn("alice@example.org")):
        assert [t.id for t in (await bridge.ListTasks(pb.ListTasksRequest())).tasks] == [task_id]
        await bridge.CancelTask(pb.CancelTaskRequest(id=task_id))


async def test_a_task_the_mesh_forgot_is_refused_even_to_its_owner(tmp_path: Path) -> None:
    """Fail closed: with room for one owner, the first task's owner is evicted by the second."""
    async with a2a_mesh(tmp_path, a2a={"max_tasks": 1}) as mesh:
        a = mesh.stub("alpha")
        first = await start_task(a, "Lisbon")
        second = await start_task(a, "Porto")
        assert (await a.GetTask(pb.GetTaskRequest(id=second))).id == second
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await a.GetTask(pb.GetTaskRequest(id=first))
        assert (e.value.code(), e.value.details()) == (grpc.StatusCode.NOT_FOUND, "Task not found")
        assert {t.id for t in (await a.ListTasks(pb.ListTasksRequest())).tasks} == {second}
