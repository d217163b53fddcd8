"""The pure decisions of agentmesh.a2a.ownership, table by table, and the in-memory store with a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from agentmesh.a2a.ownership import (
    NOT_FOUND_MESSAGE,
    REVIEWED,
    RULES,
    MemoryTaskOwners,
    Named,
    build_task_owners,
    decide,
    method_name,
    named_tasks,
    not_found,
    own_page,
    revealed_task,
)
from agentmesh.clock import FakeClock
from agentmesh.config import A2AConfig, RateLimitConfig
from agentmesh.errors import NotFound
from agentmesh.interceptors.tasks import A2A_ERROR_DOMAIN, TASK_NOT_FOUND_REASON

pb = pytest.importorskip("a2a.types.a2a_pb2", reason="the a2a-sdk (agentmesh[a2a]) is not installed")
from a2a.types import a2a_pb2_grpc  # noqa: E402
from a2a.utils.errors import A2A_ERROR_REASONS, TaskNotFoundError  # noqa: E402

GONE = "Task t1 not found"  # the a2a-sdk 1.3.0 default handler's answer for a missing task it is told to continue


def msg(task_id: str = "", refs: tuple[str, ...] = ()) -> Any:
    return pb.Message(message_id="m", task_id=task_id, reference_task_ids=list(refs))


NAMED = [
    ("GetTask", pb.GetTaskRequest(id="t1"), (Named("t1"),)),
    ("CancelTask", pb.CancelTaskRequest(id="t1"), (Named("t1"),)),
    ("SubscribeToTask", pb.SubscribeToTaskRequest(id="t1"), (Named("t1"),)),
    ("CreateTaskPushNotificationConfig", pb.TaskPushNotificationConfig(task_id="t1", url="https://x"),
     (Named("t1"),)),
    ("GetTaskPushNotificationConfig", pb.GetTaskPushNotificationConfigRequest(task_id="t1", id="c"), (Named("t1"),)),
    ("ListTaskPushNotificationConfigs", pb.ListTaskPushNotificationConfigsRequest(task_id="t1"), (Named("t1"),)),
    ("DeleteTaskPushNotificationConfig", pb.DeleteTaskPushNotificationConfigRequest(task_id="t1", id="c"),
     (Named("t1"),)),
    ("GetTask", pb.GetTaskRequest(), (Named(""),)),  # an empty id is named (and refused: nobody owns it)
    ("SendMessage", pb.SendMessageRequest(message=msg()), ()),  # a new task
    ("SendMessage", pb.SendMessageRequest(message=msg("t1")), (Named("t1", GONE),)),
    ("SendStreamingMessage", pb.SendMessageRequest(message=msg("t1")), (Named("t1", GONE),)),
    ("SendMessage", pb.SendMessageRequest(message=msg("", ("r1", "r2"))), (Named("r1"), Named("r2"))),
    ("SendMessage", pb.SendMessageRequest(message=msg("t1", ("r1",))),
     (Named("t1", GONE), Named("r1"))),
    ("ListTasks", pb.ListTasksRequest(page_size=5), ()),
    ("GetExtendedAgentCard", pb.GetExtendedAgentCardRequest(), ()),
]


@pytest.mark.parametrize(("method", "request_", "named"), NAMED)
def test_named_tasks(method: str, request_: Any, named: tuple[Named, ...]) -> None:
    assert named_tasks(method, request_) == named


def test_every_method_of_the_service_has_a_rule() -> None:
    served = {m for m in dir(a2a_pb2_grpc.A2AServiceServicer) if not m.startswith("_")}
    assert served == set(RULES)
    assert set(REVIEWED) <= set(RULES)
    with pytest.raises(KeyError):
        named_tasks("DeleteTask", pb.GetTaskRequest(id="t1"))  # a later method: no rule, refused by the stage


@pytest.mark.parametrize(("method", "name"), [
    ("/lf.a2a.v1.A2AService/GetTask", "GetTask"),
    ("/lf.a2a.v1.A2AService/Future", "Future"),
    ("/agentmesh.v1.Agent/Invoke", None),
    ("/lf.a2a.v1.A2AServiceX/GetTask", None),
])
def test_method_name(method: str, name: str | None) -> None:
    assert method_name(method) == name


REVEALED = [
    (pb.SendMessageResponse(task=pb.Task(id="t1")), "t1"),
    (pb.SendMessageResponse(message=pb.Message(message_id="m")), None),
    (pb.SendMessageResponse(message=pb.Message(message_id="m", task_id="t1")), "t1"),
    (pb.SendMessageResponse(), None),
    (pb.StreamResponse(task=pb.Task(id="t1")), "t1"),
    (pb.StreamResponse(status_update=pb.TaskStatusUpdateEvent(task_id="t1")), "t1"),
    (pb.StreamResponse(artifact_update=pb.TaskArtifactUpdateEvent(task_id="t1")), "t1"),
    (pb.StreamResponse(message=pb.Message(message_id="m")), None),
    (pb.StreamResponse(task=pb.Task()), None),
]


@pytest.mark.parametrize(("response", "task_id"), REVEALED)
def test_revealed_task(response: Any, task_id: str | None) -> None:
    assert revealed_task(response) == task_id


T1, NEW = Named("t1"), Named("t1", GONE)
DECISIONS = [
    # principal, owner, named, decision
    ("alice", "alice", T1, "allow"),
    ("bob", "alice", T1, "not-found"),  # someone else's
    ("alice", None, T1, "not-found"),  # unknown to the mesh (never seen, evicted, expired): fail closed
    (None, "alice", T1, "not-found"),  # no verified principal
    (None, None, NEW, "not-found"),
    ("bob", None, NEW, "not-found"),  # SendMessage naming an id the mesh never saw (or forgot): no takeover
    ("bob", "alice", NEW, "not-found"),  # continuing someone else's task
    ("alice", "alice", NEW, "allow"),
    ("", "", T1, "allow"),  # (principals are never empty; equality is all that counts)
]


@pytest.mark.parametrize(("principal", "owner", "named", "decision"), DECISIONS)
def test_decide(principal: str | None, owner: str | None, named: Named, decision: str) -> None:
    assert decide(principal, owner, named) == decision


def test_the_refusal_is_the_sdks_answer_for_a_missing_task() -> None:
    err = not_found(T1)
    assert isinstance(err, NotFound) and err.message == NOT_FOUND_MESSAGE == TaskNotFoundError.message
    assert err.http_status == 404 and err.grpc_code.name == "NOT_FOUND"
    assert not_found(NEW).message == GONE
    assert A2A_ERROR_REASONS[TaskNotFoundError] == TASK_NOT_FOUND_REASON
    assert A2A_ERROR_DOMAIN == "a2a-protocol.org"


def page(*ids: str, token: str = "", total: int = 0) -> Any:
    return pb.ListTasksResponse(tasks=[pb.Task(id=i) for i in ids], next_page_token=token, page_size=len(ids),
                                total_size=total or len(ids))


@pytest.mark.parametrize(("principal", "owners", "kept"), [
    ("alice", ["alice", "bob", "alice"], ["a", "c"]),
    ("bob", ["alice", "bob", "alice"], ["b"]),
    ("carol", ["alice", "bob", "alice"], []),
    ("alice", [None, None, "alice"], ["c"]),  # owners unknown to the mesh: not shown
    (None, ["alice", "bob", "alice"], []),
])
def test_own_page(principal: str | None, owners: list[str | None], kept: list[str]) -> None:
    original = page("a", "b", "c", token="next", total=40)
    mine = own_page(original, principal, owners)
    assert [t.id for t in mine.tasks] == kept
    assert (mine.page_size, mine.total_size, mine.next_page_token) == (len(kept), len(kept), "next")
    assert [t.id for t in original.tasks] == ["a", "b", "c"] and original.total_size == 40  # not mutated


# ------------------------------------------------------------------------------------------- memory store
async def test_memory_store_claims_and_keeps_the_first_owner() -> None:
    s = MemoryTaskOwners(max_tasks=10, ttl=60, clock=FakeClock())
    assert await s.owners(["t1"], "alice") == [None]
    assert await s.claim("t1", "alice") == "alice"
    assert await s.claim("t1", "bob") == "alice"  # a claim never changes an owner
    assert await s.owners(["t1", "t2"], "bob") == ["alice", None]


async def test_memory_store_evicts_the_least_recently_touched() -> None:
    clock = FakeClock()
    s = MemoryTaskOwners(max_tasks=2, ttl=60, clock=clock)
    await s.claim("t1", "alice")
    await s.claim("t2", "bob")
    assert await s.owners(["t1"], "alice") == ["alice"]  # alice touches t1: t2 is now the oldest
    await s.claim("t3", "carol")
    assert len(s) == 2
    assert await s.owners(["t1", "t2", "t3"], None) == ["alice", None, "carol"]


async def test_a_probe_by_someone_else_does_not_keep_a_task_alive() -> None:
    clock = FakeClock()
    s = MemoryTaskOwners(max_tasks=2, ttl=60, clock=clock)
    await s.claim("t1", "alice")
    await s.claim("t2", "bob")
    assert await s.owners(["t1"], "mallory") == ["alice"]  # not a touch
    await s.claim("t3", "carol")
    assert await s.owners(["t1", "t2"], None) == [None, "bob"]


async def test_memory_store_forgets_idle_owners_after_the_ttl() -> None:
    clock = FakeClock()
    s = MemoryTaskOwners(max_tasks=10, ttl=60, clock=clock)
    await s.claim("t1", "alice")
    await s.claim("t2", "bob")
    clock.advance(59)
    assert await s.owners(["t1"], "alice") == ["alice"]  # touched: 60 s more
    clock.advance(59)
    assert await s.owners(["t1", "t2"], None) == ["alice", None]  # t2 idle 118 s: forgotten
    clock.advance(1)
    assert await s.owners(["t1"], None) == [None]  # exactly ttl idle: forgotten
    assert await s.claim("t1", "bob") == "bob"  # forgotten, so claimable (the SendMessage caveat)


async def test_claims_sweep_the_idle_ones_first() -> None:
    clock = FakeClock()
    s = MemoryTaskOwners(max_tasks=10, ttl=60, clock=clock)
    for i in range(5):
        await s.claim(f"old{i}", "alice")
    clock.advance(61)
    await s.claim("new", "bob")
    assert len(s) == 1


def test_memory_store_refuses_nonsense_bounds() -> None:
    with pytest.raises(Exception, match="max_tasks"):
        MemoryTaskOwners(max_tasks=0)


async def test_build_takes_the_a2a_block_or_its_defaults() -> None:
    store = build_task_owners(RateLimitConfig(), None, agent="travel")
    assert isinstance(store, MemoryTaskOwners) and (store.max_tasks, store.ttl) == (100_000, 7 * 86400.0)
    store = build_task_owners(RateLimitConfig(), A2AConfig(card="{}", max_tasks=3, task_ttl=5.0), agent="travel")
    assert isinstance(store, MemoryTaskOwners) and (store.max_tasks, store.ttl) == (3, 5.0)


async def test_one_principal_cannot_push_out_the_owners_of_others() -> None:
    store = MemoryTaskOwners(max_tasks=10, per_principal=3, clock=FakeClock(0))
    await store.claim("a1", "alice")
    for i in range(50):  # bob creates task after task
        await store.claim(f"b{i}", "bob")
    assert await store.owners(["a1"], "alice") == ["alice"]  # alice's owner stays
    assert await store.owners([f"b{i}" for i in range(45, 50)], "bob") == [None, None, "bob", "bob", "bob"]
    assert len(store) == 4
    for p in range(12):  # many principals: the global bound still holds (least recently touched first)
        await store.claim(f"p{p}", f"principal-{p}")
    assert len(store) == 10


def test_task_keys_are_per_tenant_and_unambiguous() -> None:
    from agentmesh.a2a.ownership import task_key

    assert task_key("", "t1") != task_key("a", "t1") != task_key("b", "t1")
    assert task_key("a/b", "c") != task_key("a", "b/c")  # no tenant spells another's key
