"""Per-identity token-bucket rate limits behind one interface: in memory, or shared in Redis."""

from __future__ import annotations

import time

from agentmesh.clock import Clock
from agentmesh.config import RateLimitConfig
from agentmesh.ratelimit.base import UNLIMITED, RateDecision, RateLimiter, RuleSet, rate_limited_error
from agentmesh.ratelimit.bucket import BucketState, TakeResult, take
from agentmesh.ratelimit.memory import MemoryLimiter
from agentmesh.ratelimit.redis import RedisLimiter

__all__ = [
    "UNLIMITED",
    "BucketState",
    "MemoryLimiter",
    "RateDecision",
    "RateLimiter",
    "RedisLimiter",
    "RuleSet",
    "TakeResult",
    "build_limiter",
    "rate_limited_error",
    "take",
]


def build_limiter(cfg: RateLimitConfig, clock: Clock = time.monotonic) -> RateLimiter:
    """The live limiter for a config: ``backend: memory`` or a Redis URL (which uses Redis's clock)."""
    if cfg.backend == "memory":
        return MemoryLimiter(cfg.rules, clock=clock, max_buckets=cfg.max_buckets, idle_ttl=cfg.idle_ttl)
    return RedisLimiter(cfg.backend, cfg.rules, failure_mode=cfg.failure_mode)
