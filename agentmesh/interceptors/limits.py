"""Rate-limit and payload-guard stages (thin adapters around the limiter and the guard)."""

from __future__ import annotations

from typing import Any

import grpc

from agentmesh.audit import record_guard
from agentmesh.context import CallContext
from agentmesh.guard import PayloadGuard, raise_if_blocked
from agentmesh.interceptors.base import Stage
from agentmesh.ratelimit import RateLimiter, rate_limited_error

__all__ = ["PayloadGuardStage", "RateLimitStage"]


class RateLimitStage(Stage):
    """One token bucket per (rule, VERIFIED principal); never keyed by address or client header."""

    def __init__(self, limiter: RateLimiter) -> None:
        super().__init__()
        self.limiter = limiter

    async def before(self, call: CallContext, context: grpc.aio.ServicerContext) -> None:
        assert call.principal is not None, "the token stage runs first"
        decision = await self.limiter.acquire(call.principal, call.agent, call.method, call.roles)
        if decision.rule is not None:
            call.ratelimit_remaining = decision.remaining
        if not decision.allowed:
            raise rate_limited_error(decision, call.method)


class PayloadGuardStage(Stage):
    """Refuses oversized requests and blocks (or flags) configured patterns in string fields."""

    inspects_requests = True

    def __init__(self, guard: PayloadGuard) -> None:
        super().__init__()
        self.guard = guard

    def inspect(self, call: CallContext, request: Any) -> None:
        result = self.guard.check(request)
        if result.pattern is not None and call.span is not None:
            record_guard(call.span, "block" if result.blocked else "flag", result.pattern)
        raise_if_blocked(result)
