"""Rate-limit and payload-guard stages (thin adapters around the limiter and the guard)."""

from __future__ import annotations

from typing import Any

import grpc

from agentmesh.audit import attributes as A
from agentmesh.audit import record_guard, safe_attributes
from agentmesh.context import CallContext
from agentmesh.guard import NOT_UTF8, PayloadGuard, raise_if_blocked
from agentmesh.interceptors.base import Stage
from agentmesh.ratelimit import RateLimiter, rate_limited_error

__all__ = ["PayloadGuardStage", "RateLimitStage"]

# attributes of an agentmesh.guard event for a request passed without a full check
GUARD_UNCHECKED = "unchecked"  # "not-utf8" | "unsupported-type" (agentmesh.guard.GuardResult.unchecked)
GUARD_REASON = "reason"  # safe text: sizes and type names, never payload


class RateLimitStage(Stage):
    """One token bucket per (rule, VERIFIED principal); never keyed by address or client header."""

    def __init__(self, limiter: RateLimiter) -> None:
        super().__init__()
        self.limiter = limiter

    async def before(self, call: CallContext, context: grpc.aio.ServicerContext) -> None:
        assert call.principal is not None, "the token stage runs first"
        decision = await self.limiter.acquire(call.principal, call.agent, call.method, call.roles)
        if decision.degraded:  # let through by failure_mode "open": no count to show, the span says so
            if call.span is not None:
                call.span.set_attribute(A.RATELIMIT_DEGRADED, True)
        elif decision.rule is not None:
            call.ratelimit_remaining = decision.remaining
        if not decision.allowed:
            raise rate_limited_error(decision, call.method)


class PayloadGuardStage(Stage):
    """Refuses oversized requests and blocks (or flags) configured patterns in string fields.

    Requests that are not protobuf (raw bytes, custom codecs) are checked as bytes where they can be;
    what passes without a full check gets an ``agentmesh.guard`` event saying so: action ``partial``
    (bytes that are not UTF-8: patterns over their decodable text only) or ``skip`` (a type the guard
    cannot read), with the ``reason``.
    """

    inspects_requests = True

    def __init__(self, guard: PayloadGuard) -> None:
        super().__init__()
        self.guard = guard

    def inspect(self, call: CallContext, request: Any) -> None:
        result = self.guard.check(request)
        if call.span is not None:
            if result.pattern is not None:
                record_guard(call.span, "block" if result.blocked else "flag", result.pattern)
            elif result.unchecked is not None:
                action = "partial" if result.unchecked == NOT_UTF8 else "skip"
                call.span.add_event(A.EVENT_GUARD, safe_attributes({A.GUARD_ACTION: action,
                                                                    GUARD_UNCHECKED: result.unchecked,
                                                                    GUARD_REASON: result.reason}))
        raise_if_blocked(result)
