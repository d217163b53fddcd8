"""The server chain's per-method plan: the task-owner stage runs (and reviews responses) for A2A methods
only, decided once when a method's handler is wrapped; other methods have no response step at all."""

from __future__ import annotations

from typing import Any

import pytest

from agentmesh.a2a.ownership import MemoryTaskOwners
from agentmesh.config import GuardConfig
from agentmesh.context import CallContext
from agentmesh.guard import PayloadGuard
from agentmesh.interceptors.base import Stage, _Plan, write_responses
from agentmesh.interceptors.handed import CheckedContext
from agentmesh.interceptors.limits import PayloadGuardStage
from agentmesh.interceptors.tasks import TaskOwnershipStage

A2A = "/lf.a2a.v1.A2AService/"


@pytest.mark.parametrize(("method", "runs", "reviews"), [
    ("/agentmesh.v1.Agent/Invoke", False, False),
    ("/other.v1.Svc/GetTask", False, False),
    (A2A + "GetTask", True, False),
    (A2A + "SubscribeToTask", True, False),
    (A2A + "SendMessage", True, True),
    (A2A + "SendStreamingMessage", True, True),
    (A2A + "ListTasks", True, True),
    (A2A + "Unknown", True, False),  # runs, to refuse it (no rule says how it is scoped)
])
def test_plan_per_method(method: str, runs: bool, reviews: bool) -> None:
    guard, tasks = PayloadGuardStage(PayloadGuard(GuardConfig())), TaskOwnershipStage(MemoryTaskOwners())
    plan = _Plan.of([guard, tasks], method)
    assert plan.stages == ((guard, tasks) if runs else (guard,))
    assert plan.inspectors == (guard,)
    assert plan.reviewers == ((tasks,) if reviews else ())


class Upper(Stage):
    async def respond(self, call: Any, response: Any) -> Any:
        return response.upper()


class Context:
    def __init__(self) -> None:
        self.written: list[Any] = []

    async def write(self, item: Any) -> None:
        self.written.append(item)


@pytest.mark.parametrize("respond", [None, Upper().respond])
async def test_write_responses_reviews_each_item_when_asked(respond: Any) -> None:
    async def agen(request: Any, context: Any) -> Any:
        for x in request:
            yield x

    def gen(request: Any, context: Any) -> Any:
        yield from request

    async def writer(request: Any, context: Any) -> None:  # writes with context.write() itself
        for x in request:
            await context.write(x)

    for behaviour in (agen, gen, writer):
        ctx = Context()
        review = None if respond is None else (lambda item: respond(None, item))
        call = CallContext(method=A2A + "SendStreamingMessage", agent="travel")
        handed = ctx if review is None else CheckedContext(ctx, call, (), review)  # type: ignore[arg-type]
        await write_responses(behaviour, ["a", "b"], handed)  # type: ignore[arg-type]
        assert ctx.written == (["a", "b"] if respond is None else ["A", "B"])


class TrailingContext:
    def set_trailing_metadata(self, md: Any) -> None:
        self.trailing = md


def a2a_call(principal: str, method: str, request: Any) -> CallContext:
    call = CallContext(method=A2A + method, agent="travel")
    call.principal, call.request = principal, request
    return call


async def test_owners_are_kept_per_tenant() -> None:
    """Task ids need be unique only within a tenant: alice's task-1 in t-alice and bob's task-1 in t-bob are
    two tasks, and alice naming bob's tenant gets bob's task refused (it was recorded as hers before)."""
    from a2a.types import a2a_pb2 as pb

    from agentmesh.errors import NotFound

    stage = TaskOwnershipStage(MemoryTaskOwners())
    for who in ("alice", "bob"):
        send = pb.SendMessageRequest(tenant=f"t-{who}", message=pb.Message(message_id=who))
        reply = pb.SendMessageResponse(task=pb.Task(id="task-1"))
        assert await stage.respond(a2a_call(who, "SendMessage", send), reply) is reply  # each one's own task-1
    for who in ("alice", "bob"):  # the owners' own reads
        await stage.before(a2a_call(who, "GetTask", pb.GetTaskRequest(tenant=f"t-{who}", id="task-1")),
                           TrailingContext())  # type: ignore[arg-type]
    with pytest.raises(NotFound):  # the attack: the same id in the other's tenant
        await stage.before(a2a_call("alice", "GetTask", pb.GetTaskRequest(tenant="t-bob", id="task-1")),
                           TrailingContext())  # type: ignore[arg-type]
    page = pb.ListTasksResponse(tasks=[pb.Task(id="task-1")])
    assert len((await stage.respond(a2a_call("alice", "ListTasks", pb.ListTasksRequest(tenant="t-bob")),
                                    page)).tasks) == 0
    assert len((await stage.respond(a2a_call("bob", "ListTasks", pb.ListTasksRequest(tenant="t-bob")),
                                    page)).tasks) == 1


def test_the_handed_context_delegates_every_method_of_grpcs() -> None:
    """grpc.aio.ServicerContext's own methods (add_done_callback, cancelled, time_remaining...) are no-ops on
    the base class: the wrapper the chain hands handlers must define each, or a handler's done callback never
    runs (an A2A stream whose client went away was never seen to end)."""
    import grpc

    base = grpc.aio.ServicerContext
    public = [n for n, v in vars(base).items() if callable(v) and not n.startswith("_")]
    assert public and all(vars(CheckedContext).get(n) is not None for n in public), \
        [n for n in public if n not in vars(CheckedContext)]
