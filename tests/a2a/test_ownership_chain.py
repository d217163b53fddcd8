"""The server chain's per-method plan: the task-owner stage runs (and reviews responses) for A2A methods
only, decided once when a method's handler is wrapped; other methods have no response step at all."""

from __future__ import annotations

from typing import Any

import pytest

from agentmesh.a2a.ownership import MemoryTaskOwners
from agentmesh.config import GuardConfig
from agentmesh.guard import PayloadGuard
from agentmesh.interceptors.base import Stage, _Plan, write_responses
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

    for behaviour in (agen, gen):
        ctx = Context()
        review = None if respond is None else (lambda item: respond(None, item))
        await write_responses(behaviour, ["a", "b"], ctx, review)  # type: ignore[arg-type]
        assert ctx.written == (["a", "b"] if respond is None else ["A", "B"])
