"""Token buckets in Redis, shared by every replica of an agent.

One Lua script does the whole step atomically: it reads the server's ``TIME`` (so replicas with
skewed clocks agree), refills and takes from the bucket with the same math as ``bucket.py``, stores
``tokens`` and the timestamp (integer microseconds) in a hash, and sets a TTL of the time to refill
plus a margin, after which a missing key is the same as a full bucket. redis-py's ``Script`` object
sends it with EVALSHA and loads it again on NOSCRIPT.

If Redis is unreachable, slow (over ``timeout``) or errors, ``failure_mode="open"`` lets the call
through with ``degraded=True``, and ``"closed"`` raises :class:`agentmesh.errors.Unavailable`.
Redis exceptions never leave this module.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Literal
from urllib.parse import quote

from agentmesh.config import RateRule
from agentmesh.errors import ConfigError, Unavailable
from agentmesh.ratelimit.base import UNLIMITED, RateDecision, RuleSet
from agentmesh.ratelimit.bucket import EPSILON
from agentmesh.redisclient import connect

__all__ = ["BUCKET_SCRIPT", "RedisLimiter"]

log = logging.getLogger(__name__)

#: KEYS[1] = bucket hash; ARGV = rate (tokens/s), burst, cost, epsilon, TTL margin (ms).
#: Returns {allowed (0/1), tokens, retry_after, reset} with the floats as strings (Redis would
#: truncate Lua numbers to integers).
BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local eps = tonumber(ARGV[4])
local margin = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local h = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(h[1])
local ts = tonumber(h[2])
if tokens == nil or ts == nil then
  tokens = burst
else
  local elapsed = (now - ts) / 1000000
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(burst, tokens + elapsed * rate)
end
local allowed = 0
local retry = 0
if tokens + eps >= cost then
  tokens = math.max(0, tokens - cost)
  allowed = 1
else
  retry = (cost - tokens) / rate
end
local reset = (burst - tokens) / rate
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(reset * 1000) + margin)
return {allowed, string.format('%.17g', tokens), string.format('%.17g', retry), string.format('%.17g', reset)}
"""

_TTL_MARGIN_MS = 1000


class RedisLimiter:
    def __init__(
        self,
        url: str,
        rules: Sequence[RateRule],
        *,
        failure_mode: Literal["open", "closed"] = "open",
        key_prefix: str = "agentmesh:rl:",
        timeout: float = 0.25,
    ) -> None:
        if failure_mode not in ("open", "closed"):
            raise ConfigError(f"rate_limits.failure_mode: expected open or closed, got {failure_mode!r}")
        self._rules = RuleSet(rules)
        self._failure_mode = failure_mode
        self._prefix = key_prefix
        self._timeout = timeout
        try:
            self._redis, self._errors = connect(url, timeout)  # one attempt: the caller's deadline is short
            # a step's: the client's, and a reply of the wrong shape
            self._step_errors: tuple[type[BaseException], ...] = (*self._errors, IndexError)
        except ValueError:
            # never echo the URL: it may hold a password
            raise ConfigError("rate_limits.backend: invalid Redis URL") from None
        self._script = self._redis.register_script(BUCKET_SCRIPT)
        self._degraded = False

    def key(self, rule: str, principal: str) -> str:
        """The Redis key of a bucket; the rule name is quoted so ``:`` cannot make two keys collide."""
        return f"{self._prefix}{quote(rule, safe='')}:{principal}"

    async def acquire(self, principal: str, to: str, method: str, roles: Sequence[str]) -> RateDecision:
        rule = self._rules.select(principal, to, method, roles)
        if rule is None:
            return UNLIMITED
        return await self.take(rule, principal)

    async def take(self, rule: RateRule, principal: str, cost: int = 1) -> RateDecision:
        args = (repr(float(rule.rate)), rule.burst, cost, repr(EPSILON), _TTL_MARGIN_MS)
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._script(keys=[self.key(rule.name, principal)], args=args)
            allowed, tokens, retry_after, reset = int(raw[0]), float(raw[1]), float(raw[2]), float(raw[3])
        except self._step_errors as e:
            return self._backend_down(rule, e)
        if self._degraded:
            self._degraded = False
            log.info("rate-limit backend is reachable again")
        remaining = int(tokens + EPSILON)
        return RateDecision(allowed == 1, rule.name, rule.burst, remaining, retry_after, reset)

    def _backend_down(self, rule: RateRule, error: BaseException) -> RateDecision:
        if not self._degraded:
            self._degraded = True
            log.warning("rate-limit backend unavailable (%s); failing %s", type(error).__name__,
                        self._failure_mode)
        if self._failure_mode == "closed":
            raise Unavailable("rate-limit backend unavailable") from None
        return RateDecision(True, rule.name, rule.burst, rule.burst, 0.0, 0.0, degraded=True)

    async def aclose(self) -> None:
        try:
            await self._redis.aclose()
        except self._errors:
            pass
