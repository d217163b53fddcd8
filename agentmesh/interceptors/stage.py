"""A step of the server chain (:class:`agentmesh.interceptors.base.ServerChain`): its hooks, and which
methods it applies to (asked once per method, when the method's handler is wrapped)."""

from __future__ import annotations

from typing import Any

import grpc

from agentmesh.context import CallContext

__all__ = ["Stage"]


class Stage:
    """One step of the server chain: a thin adapter around one sans-IO decision."""

    #: set by subclasses that look at request messages
    inspects_requests = False
    #: set by stages that also guard the exempt methods (health): the peer's certificate checks
    guards_exempt = False

    def applies_to(self, method: str) -> bool:
        """Whether the stage runs for ``method`` at all (asked once per method, when it is wrapped)."""
        return True

    def reviews(self, method: str) -> bool:
        """Whether ``respond`` sees the responses of ``method`` (asked once per method, when it is wrapped)."""
        return False

    async def before(self, call: CallContext, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Per-call check; raise an ``agentmesh.errors.MeshError`` to refuse the call."""

    def inspect(self, call: CallContext, request: Any) -> None:
        """Per-message check; raise an ``agentmesh.errors.MeshError`` to refuse the call."""

    async def respond(self, call: CallContext, response: Any) -> Any:
        """Per-response review (methods it ``reviews``): the response to send; raise an
        ``agentmesh.errors.MeshError`` to end the call instead."""
        return response
