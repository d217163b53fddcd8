"""What every rate-limit backend shares: the decision, the interface, rule selection, the error.

Rule selection: the FIRST rule, in config order, whose non-empty match fields (method globs, roles
any-of, principals, target agent) all match the call; list overrides for a role or principal first.
No matching rule means no limit. The bucket key is ``(rule name, verified principal)``: never an IP
address or a header, so one noisy caller cannot starve the others.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

from agentmesh.config import RateRule, compile_method_globs
from agentmesh.errors import RateLimited

__all__ = ["UNLIMITED", "RateDecision", "RateLimiter", "RuleSet", "rate_limited_error"]


class RateDecision(NamedTuple):
    """One call's verdict (a NamedTuple, not a frozen dataclass: one is made per call, at a third of the cost)."""

    allowed: bool
    rule: str | None  # None: no rule applies, the call is not limited
    limit: int  # the rule's burst (0 when unlimited)
    remaining: int  # whole tokens left
    retry_after: float  # seconds until a token is back (0 when allowed)
    reset: float  # seconds until the bucket is full
    degraded: bool = False  # the backend was unreachable and failure_mode "open" let the call through


UNLIMITED = RateDecision(allowed=True, rule=None, limit=0, remaining=0, retry_after=0.0, reset=0.0)


@runtime_checkable
class RateLimiter(Protocol):
    async def acquire(self, principal: str, to: str, method: str, roles: Sequence[str]) -> RateDecision:
        """Takes one token from the bucket of ``principal`` under the first matching rule."""
        ...

    async def aclose(self) -> None:
        """Releases connections, if any."""
        ...


@dataclass(frozen=True, slots=True)
class _Matcher:
    rule: RateRule
    methods: re.Pattern[str] | None
    roles: frozenset[str]
    principals: frozenset[str]
    to: frozenset[str]

    def matches(self, principal: str, to: str, method: str, roles: Sequence[str]) -> bool:
        return (
            (self.methods is None or self.methods.fullmatch(method) is not None)
            and (not self.roles or not self.roles.isdisjoint(roles))
            and (not self.principals or principal in self.principals)
            and (not self.to or to in self.to)
        )


class RuleSet:
    """Rate rules compiled once; :meth:`select` finds the rule for a call.

    The rules come checked (:class:`agentmesh.config.RateRule` checks itself, :class:`RateLimitConfig`
    that names are unique, :class:`MeshConfig` the agents and methods they name).
    """

    def __init__(self, rules: Sequence[RateRule]) -> None:
        self._matchers = tuple(
            _Matcher(r, compile_method_globs(r.methods), frozenset(r.roles), frozenset(r.principals), frozenset(r.to))
            for r in rules
        )

    @property
    def rules(self) -> tuple[RateRule, ...]:
        return tuple(m.rule for m in self._matchers)

    def select(self, principal: str, to: str, method: str, roles: Sequence[str]) -> RateRule | None:
        for m in self._matchers:
            if m.matches(principal, to, method, roles):
                return m.rule
        return None


def _seconds(x: float) -> str:
    if x < 10:
        return f"{math.ceil(x * 10) / 10:.1f}s"
    return f"{math.ceil(x)}s"


def rate_limited_error(decision: RateDecision, method: str | None = None) -> RateLimited:
    """The RESOURCE_EXHAUSTED error for a refused decision, carrying its retry information."""
    what = f" for {method}" if method else ""
    return RateLimited(
        f"rate limit exceeded{what}; retry in {_seconds(decision.retry_after)}",
        retry_after=decision.retry_after,
        limit=decision.limit,
        remaining=decision.remaining,
        reset=decision.reset,
    )
