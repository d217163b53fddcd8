"""An a2a-sdk ``AgentExecutor`` served as a mesh agent, unchanged: no subclass, no agentmesh import.

The mesh file names the executor (``app: "myagents.travel:executor"``: an instance, a class, or a
factory that takes ``node``) and the card (``a2a: {card: card.json}``). agentmesh builds the a2a-sdk's
own ``GrpcHandler`` over its ``DefaultRequestHandler`` and an ``InMemoryTaskStore``, and serves
``lf.a2a.v1.A2AService`` behind the whole server chain. The one piece it adds is the call context
builder: the a2a-sdk's ``ServerCallContext.user`` is the caller the chain verified
(:class:`MeshUser`: principal, roles, chain), so the SDK's task store, which keys tasks by
``user.user_name``, keeps each principal's tasks apart, and the executor sees who asks through the
SDK's own ``RequestContext.call_context``. The chain's task-ownership stage
(:mod:`agentmesh.a2a.ownership`) enforces the same for any A2A server, adapter or not.
"""

from __future__ import annotations

import inspect
from typing import Any

from a2a.auth.user import UnauthenticatedUser, User
from a2a.server.agent_execution import AgentExecutor
from a2a.server.context import ServerCallContext
from a2a.server.request_handlers import DefaultGrpcServerCallContextBuilder, DefaultRequestHandler, GrpcHandler
from a2a.server.tasks import InMemoryTaskStore

from agentmesh.a2a.sdk import card_from_json
from agentmesh.config import AgentConfig
from agentmesh.context import CallContext, maybe_current_call
from agentmesh.errors import ConfigError

__all__ = ["MeshCallContextBuilder", "MeshUser", "a2a_servicer", "executor_of"]


class MeshUser(User):
    """The caller the mesh verified (certificate, bound token, delegation chain), as an a2a-sdk User."""

    def __init__(self, call: CallContext) -> None:
        self.call = call

    @property
    def is_authenticated(self) -> bool:
        return self.call.principal is not None

    @property
    def user_name(self) -> str:
        return self.call.principal or ""

    @property
    def roles(self) -> tuple[str, ...]:
        return self.call.roles

    @property
    def chain(self) -> tuple[str, ...]:
        return self.call.chain


class MeshCallContextBuilder(DefaultGrpcServerCallContextBuilder):
    """The a2a-sdk's call context with the mesh's verified caller: ``user`` and ``state["agentmesh"]``."""

    def build(self, context: Any) -> ServerCallContext:
        built = super().build(context)
        call = maybe_current_call()
        if call is not None:
            built.state["agentmesh"] = call
        return built

    def build_user(self, context: Any) -> User:
        call = maybe_current_call()
        if call is None or call.principal is None:  # not behind the mesh's chain: nobody
            return UnauthenticatedUser()
        return MeshUser(call)


def executor_of(obj: Any, name: str, node: Any) -> AgentExecutor:
    """The ``AgentExecutor`` that ``app`` names: the object itself, or what its class or factory makes."""
    if isinstance(obj, AgentExecutor):
        return obj
    if callable(obj):
        try:
            takes_node = "node" in inspect.signature(obj).parameters
        except (TypeError, ValueError):
            takes_node = False
        made = obj(node=node) if takes_node else obj()
        if isinstance(made, AgentExecutor):
            return made
        raise ConfigError(f"agents.{name}.app: {getattr(obj, '__name__', obj)!s} made a {type(made).__name__}, "
                          "not an a2a-sdk AgentExecutor")
    raise ConfigError(f"agents.{name}.app: a {type(obj).__name__} is not an a2a-sdk AgentExecutor")


def a2a_servicer(agent: AgentConfig, executor: AgentExecutor, *, card: Any = None,
                 extended_card: Any = None) -> GrpcHandler:
    """The a2a-sdk's GrpcHandler for ``executor``, with the verified caller as the SDK's user."""
    if agent.a2a is None:
        raise ConfigError(f"agents.{agent.name}.a2a: required to serve an a2a-sdk AgentExecutor")
    what = f"agents.{agent.name}.a2a"
    if card is None:
        card = card_from_json(agent.a2a.card, f"{what}.card")
    if extended_card is None and agent.a2a.extended_card is not None:
        extended_card = card_from_json(agent.a2a.extended_card, f"{what}.extended_card")
    handler = DefaultRequestHandler(executor, InMemoryTaskStore(), card, extended_agent_card=extended_card)
    return GrpcHandler(handler, context_builder=MeshCallContextBuilder())
