"""In-process token buckets: one replica, O(1) per call, bounded memory.

Buckets live in an ``OrderedDict`` kept in last-use order. Each call drops buckets from the cold
end that have been idle for ``idle_ttl`` and the time they need to refill (so dropping one never
hands out tokens early), and the least recently used ones beyond ``max_buckets``. ``acquire`` never
awaits inside its critical section, so concurrent tasks on one event loop cannot both take the
last token.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

from agentmesh.clock import Clock
from agentmesh.config import RateRule
from agentmesh.ratelimit.base import UNLIMITED, RateDecision, RuleSet
from agentmesh.ratelimit.bucket import BucketState, take

__all__ = ["MemoryLimiter"]


class MemoryLimiter:
    def __init__(
        self,
        rules: Sequence[RateRule],
        *,
        clock: Clock = time.monotonic,
        max_buckets: int = 100_000,
        idle_ttl: float = 600.0,
    ) -> None:
        if max_buckets < 1:
            raise ValueError("max_buckets must be >= 1")
        self._rules = RuleSet(rules)
        self._clock = clock
        self._max_buckets = max_buckets
        self._idle_ttl = idle_ttl
        # (rule name, principal) -> (state, clock reading after which the bucket may be dropped)
        self._buckets: OrderedDict[tuple[str, str], tuple[BucketState, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    async def acquire(self, principal: str, to: str, method: str, roles: Sequence[str]) -> RateDecision:
        rule = self._rules.select(principal, to, method, roles)
        if rule is None:
            return UNLIMITED
        return self.take(rule, principal)

    def take(self, rule: RateRule, principal: str, cost: int = 1) -> RateDecision:
        """Synchronous core of :meth:`acquire`, for callers that already selected the rule."""
        now = self._clock()
        key = (rule.name, principal)
        entry = self._buckets.get(key)
        result = take(entry[0] if entry else None, now, rule.rate, rule.burst, cost)
        self._buckets[key] = (result.state, now + max(self._idle_ttl, result.reset))
        self._buckets.move_to_end(key)
        self._evict(now)
        return RateDecision(result.allowed, rule.name, rule.burst, result.remaining, result.retry_after,
                            result.reset)

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        while len(buckets) > self._max_buckets:
            buckets.popitem(last=False)
        # Amortised O(1): every bucket is dropped at most once. Stops at the first one still needed.
        while buckets:
            _, (_, drop_after) = next(iter(buckets.items()))
            if drop_after > now:
                break
            buckets.popitem(last=False)

    async def aclose(self) -> None:
        self._buckets.clear()
