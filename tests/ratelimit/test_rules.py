"""Rule selection, the factory and the RESOURCE_EXHAUSTED error, shared by both backends."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from agentmesh.config import RateLimitConfig, RateRule
from agentmesh.errors import ConfigError, RateLimited
from agentmesh.ratelimit import (
    MemoryLimiter,
    RateDecision,
    RateLimiter,
    RedisLimiter,
    RuleSet,
    build_limiter,
    rate_limited_error,
)

INVOKE = "/agentmesh.v1.Agent/Invoke"
RULES = RuleSet((
    RateRule("vip", rate=100.0, burst=100, principals=("alice",)),
    RateRule("bots", rate=1.0, burst=1, roles=("bot", "crawler")),
    RateRule("describe", rate=50.0, burst=50, methods=("/agentmesh.v1.Agent/Describe",)),
    RateRule("to-validator", rate=2.0, burst=2, to=("validator",)),
    RateRule("clients-invoke", rate=5.0, burst=10, roles=("client",), methods=("/agentmesh.v1.Agent/*",)),
))


@pytest.mark.parametrize(
    ("principal", "to", "method", "roles", "rule"),
    [
        ("alice", "ingestor", INVOKE, ("bot",), "vip"),  # principal override listed first wins
        ("bob", "ingestor", INVOKE, ("client", "crawler"), "bots"),  # role override before the general rule
        ("bob", "ingestor", "/agentmesh.v1.Agent/Describe", ("client",), "describe"),
        ("bob", "validator", INVOKE, ("client",), "to-validator"),
        ("bob", "ingestor", INVOKE, ("client",), "clients-invoke"),
        ("bob", "ingestor", "/other.v1.S/M", ("client",), None),
        ("bob", "ingestor", INVOKE, (), None),
    ],
)
def test_first_matching_rule_wins(principal: str, to: str, method: str, roles: tuple[str, ...],
                                  rule: str | None) -> None:
    selected = RULES.select(principal, to, method, roles)
    assert (selected.name if selected else None) == rule


@pytest.mark.parametrize(
    "build",
    [
        lambda: RateLimitConfig(rules=(RateRule("a", rate=1.0, burst=1), RateRule("a", rate=2.0, burst=2))),
        lambda: RateRule("zero-rate", rate=0.0, burst=1),
        lambda: RateRule("zero-burst", rate=1.0, burst=0),
    ],
)
def test_invalid_rules(build: Callable[[], object]) -> None:
    """Rules are refused when built (agentmesh.config); the RuleSet only compiles them."""
    with pytest.raises(ConfigError):
        build()


def test_rate_limited_error() -> None:
    d = RateDecision(False, "clients", limit=10, remaining=0, retry_after=0.17, reset=2.0)
    err = rate_limited_error(d, INVOKE)
    assert isinstance(err, RateLimited)
    assert err.grpc_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.http_status == 429
    assert err.message == f"rate limit exceeded for {INVOKE}; retry in 0.2s"
    assert (err.retry_after, err.limit, err.remaining, err.reset) == (0.17, 10, 0, 2.0)
    assert rate_limited_error(d).message == "rate limit exceeded; retry in 0.2s"
    long = RateDecision(False, "x", limit=1, remaining=0, retry_after=59.2, reset=60.0)
    assert rate_limited_error(long, INVOKE).message.endswith("retry in 60s")


async def test_build_limiter() -> None:
    mem = build_limiter(RateLimitConfig(rules=(RateRule("r", rate=1.0, burst=1),), max_buckets=7))
    assert isinstance(mem, MemoryLimiter) and isinstance(mem, RateLimiter)
    red = build_limiter(RateLimitConfig(backend="redis://127.0.0.1:1/0", failure_mode="closed"))
    assert isinstance(red, RedisLimiter) and isinstance(red, RateLimiter)
    await red.aclose()
    await mem.aclose()
