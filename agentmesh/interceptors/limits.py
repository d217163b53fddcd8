"""Rate-limit and payload-guard stages (thin adapters around the limiter and the guard)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable
from typing import Any

import grpc

from agentmesh.audit import attributes as A
from agentmesh.audit import record_guard, safe_attributes
from agentmesh.context import CallContext
from agentmesh.guard import NOT_UTF8, WORK_PER_BYTE, GuardResult, PayloadGuard, raise_if_blocked
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

    async def before(self, call: CallContext, context: grpc.aio.ServicerContext[Any, Any]) -> None:
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

    A request that is one message is checked before the handler (``before``): inline when the check
    fits in ``inline_units`` of work, else in a thread (``asyncio.to_thread``), so a costly request
    (up to the guard's work budget: tens of milliseconds for 1 MiB) does not hold the event loop. The
    thread still needs the GIL; the check hands the loop a turn about every millisecond of its work
    (``_turns``), so other calls go on, sharing the CPU with it. Only the message's serialisation (a C
    call, like the parsing grpc did on the loop just before) is always done on the loop. Request
    streams are checked message by message as the handler reads them (``inspect``), inline: each
    message within the work budget.

    Requests that are not protobuf (raw bytes, custom codecs) are checked as bytes where they can be;
    what passes without a full check gets an ``agentmesh.guard`` event saying so: action ``partial``
    (bytes that are not UTF-8: patterns over their decodable text only) or ``skip`` (a type the guard
    cannot read), with the ``reason``.
    """

    inspects_requests = True
    #: the work a request's check may do on the event loop: what checking 64 KiB may cost (~4 ms at the
    #: guard's worst cost a byte, under the 5 ms GIL switch interval); a check that needs more runs in a
    #: thread (handing over costs ~100 us, the check of ~10 KiB: smaller requests stay where they are)
    inline_units = WORK_PER_BYTE * 64 * 1024

    def __init__(self, guard: PayloadGuard) -> None:
        super().__init__()
        self.guard = guard

    async def before(self, call: CallContext, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        request = call.request
        if request is None:  # a request stream (or a codec that made None: inspect says so)
            return
        result = self.guard.check_within(request, self.inline_units)
        if result is None:
            result = await asyncio.to_thread(self.guard.check, request, self._turns(asyncio.get_running_loop()))
        call.request_checked = True
        self._record(call, result)

    def inspect(self, call: CallContext, request: Any) -> None:
        if call.request_checked:
            return
        self._record(call, self.guard.check(request))

    @staticmethod
    def _turns(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """What a check in a thread calls about every millisecond of its work: it waits (the GIL
        released) until the loop has run what was ready, so other calls go on while a costly request is
        checked, where the GIL alone would hand the loop a turn every switch interval (5 ms) at best.
        Best effort: a loop too busy to answer within 0.1 s is not waited for longer."""

        def turn() -> None:
            done = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop)
            with contextlib.suppress(concurrent.futures.TimeoutError):
                done.result(timeout=0.1)

        return turn

    @staticmethod
    def _record(call: CallContext, result: GuardResult) -> None:
        if call.span is not None:
            if result.pattern is not None:
                record_guard(call.span, "block" if result.blocked else "flag", result.pattern)
            elif result.unchecked is not None:
                action = "partial" if result.unchecked == NOT_UTF8 else "skip"
                call.span.add_event(A.EVENT_GUARD, safe_attributes({A.GUARD_ACTION: action,
                                                                    GUARD_UNCHECKED: result.unchecked,
                                                                    GUARD_REASON: result.reason}))
        raise_if_blocked(result)
