"""The task-ownership stage: A2A tasks scoped to their owner (a thin adapter around ``a2a/ownership.py``).

It applies only to ``lf.a2a.v1.A2AService`` methods (other methods do not run it at all). ``before``
refuses a request naming a task that is not the caller's; ``respond`` records the owner of the tasks a
SendMessage / SendStreamingMessage response reveals (and ends the call if one is someone else's), and
keeps the caller's own tasks in a ListTasks page. A refusal is the a2a-sdk's own NOT_FOUND for a missing
task, with the same ``google.rpc.ErrorInfo`` detail: the caller cannot tell "not yours" from "none".
"""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from agentmesh.a2a.ownership import (
    REVIEWED,
    RULES,
    Named,
    TaskOwners,
    decide,
    method_name,
    named_tasks,
    not_found,
    own_page,
    revealed_task,
    task_key,
)
from agentmesh.context import CallContext
from agentmesh.errors import NotFound, PermissionDenied
from agentmesh.interceptors.stage import Stage

__all__ = ["A2A_ERROR_DOMAIN", "TASK_NOT_FOUND_REASON", "TaskOwnershipStage"]

#: the ErrorInfo the a2a-sdk's gRPC server attaches to its NOT_FOUND for a missing task
A2A_ERROR_DOMAIN = "a2a-protocol.org"
TASK_NOT_FOUND_REASON = "TASK_NOT_FOUND"


def _sdk_details(message: str) -> tuple[tuple[str, str | bytes], ...]:
    detail = status_pb2.Status(code=code_pb2.NOT_FOUND, message=message)
    detail.details.add().Pack(error_details_pb2.ErrorInfo(reason=TASK_NOT_FOUND_REASON, domain=A2A_ERROR_DOMAIN))
    return tuple(rpc_status.to_status(detail).trailing_metadata)


def _tenant(call: CallContext) -> str:
    """The A2A tenant the request names ("" for none): owners are kept per tenant."""
    return str(getattr(call.request, "tenant", "") or "")


class TaskOwnershipStage(Stage):
    """A2A tasks: each principal sees, cancels, continues and subscribes to its own tasks only."""

    def __init__(self, owners: TaskOwners) -> None:
        self.owners = owners

    def applies_to(self, method: str) -> bool:
        return method_name(method) is not None

    def reviews(self, method: str) -> bool:
        return method_name(method) in REVIEWED

    async def before(self, call: CallContext, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        name = method_name(call.method)
        if name not in RULES:
            call.decision = "deny"
            raise PermissionDenied(f"{call.method}: not scoped to task owners by this mesh; refused")
        named = named_tasks(name, call.request)
        if not named:
            return
        tenant = _tenant(call)
        owners = await self.owners.owners([task_key(tenant, n.task_id) for n in named], call.principal)
        for n, owner in zip(named, owners, strict=True):
            if decide(call.principal, owner, n) != "allow":
                raise self._refuse(call, context, n)

    async def respond(self, call: CallContext, response: Any) -> Any:
        if method_name(call.method) == "ListTasks":
            tenant = _tenant(call)
            owners = await self.owners.owners([task_key(tenant, t.id) for t in response.tasks], call.principal)
            return own_page(response, call.principal, owners)
        task_id = revealed_task(response)
        if task_id is None:
            return response
        named = Named(task_id)
        key = task_key(_tenant(call), task_id)
        owner = await self.owners.claim(key, call.principal) if call.principal is not None else None
        if decide(call.principal, owner, named) != "allow":
            raise self._refuse(call, None, named)
        return response

    @staticmethod
    def _refuse(call: CallContext, context: grpc.aio.ServicerContext[Any, Any] | None, named: Named) -> NotFound:
        call.decision = "deny"
        if context is not None:  # the chain aborts with no metadata of its own: these are sent
            context.set_trailing_metadata(_sdk_details(named.message))
        return not_found(named)
