"""The in-memory limiter, driven by a fake clock: it never sleeps."""

from __future__ import annotations

import asyncio

from agentmesh.clock import FakeClock
from agentmesh.config import RateRule
from agentmesh.ratelimit import UNLIMITED, MemoryLimiter

INVOKE = "/agentmesh.v1.Agent/Invoke"
CLIENTS = RateRule("clients", rate=5.0, burst=10, roles=("client",))


def limiter(*rules: RateRule, clock: FakeClock | None = None, **kw: float) -> MemoryLimiter:
    return MemoryLimiter(rules or (CLIENTS,), clock=clock or FakeClock(), **kw)  # type: ignore[arg-type]


async def acquire(lim: MemoryLimiter, principal: str = "alice", roles: tuple[str, ...] = ("client",)) -> bool:
    return (await lim.acquire(principal, "ingestor", INVOKE, roles)).allowed


async def test_burst_then_refused_with_retry_info() -> None:
    lim = limiter()
    assert [await acquire(lim) for _ in range(10)] == [True] * 10
    d = await lim.acquire("alice", "ingestor", INVOKE, ("client",))
    assert not d.allowed
    assert (d.rule, d.limit, d.remaining, d.degraded) == ("clients", 10, 0, False)
    assert abs(d.retry_after - 0.2) < 1e-6
    assert abs(d.reset - 2.0) < 1e-6


async def test_refill_over_time() -> None:
    clock = FakeClock()
    lim = limiter(clock=clock)
    for _ in range(10):
        await acquire(lim)
    assert not await acquire(lim)
    clock.advance(0.2)
    assert await acquire(lim)
    assert not await acquire(lim)
    clock.advance(1.0)
    assert [await acquire(lim) for _ in range(6)] == [True] * 5 + [False]


async def test_never_over_burst_after_long_idle() -> None:
    clock = FakeClock()
    lim = limiter(clock=clock)
    await acquire(lim)
    clock.advance(3600)
    d = await lim.acquire("alice", "ingestor", INVOKE, ("client",))
    assert d.remaining == 9
    assert [await acquire(lim) for _ in range(10)] == [True] * 9 + [False]


async def test_principals_do_not_share_a_bucket() -> None:
    lim = limiter()
    for _ in range(10):
        await acquire(lim, "noisy")
    assert not await acquire(lim, "noisy")
    assert await acquire(lim, "quiet")


async def test_override_rule_listed_first_has_its_own_bucket() -> None:
    vip = RateRule("vip", rate=100.0, burst=100, principals=("alice",))
    lim = limiter(vip, CLIENTS)
    assert all([await acquire(lim, "alice") for _ in range(50)])
    assert [await acquire(lim, "bob") for _ in range(11)] == [True] * 10 + [False]
    d = await lim.acquire("alice", "ingestor", INVOKE, ("client",))
    assert (d.rule, d.limit, d.remaining) == ("vip", 100, 49)


async def test_no_rule_means_unlimited() -> None:
    lim = limiter()
    for _ in range(100):
        assert await lim.acquire("alice", "ingestor", INVOKE, ("agent",)) == UNLIMITED
    assert len(lim) == 0


async def test_many_principals_keep_memory_bounded() -> None:
    lim = limiter(max_buckets=100)
    for i in range(10_000):
        await acquire(lim, f"p{i}")
    assert len(lim) == 100


async def test_idle_buckets_are_dropped_once_full_again() -> None:
    clock = FakeClock()
    lim = limiter(clock=clock, idle_ttl=60.0)
    for i in range(50):
        await acquire(lim, f"p{i}")
    clock.advance(30)
    await acquire(lim, "fresh")
    assert len(lim) == 51  # not idle long enough yet
    clock.advance(31)
    await acquire(lim, "fresh")
    assert len(lim) == 1


async def test_idle_bucket_is_kept_while_still_refilling() -> None:
    """Dropping a bucket that is not yet full would hand out tokens early."""
    slow = RateRule("slow", rate=1 / 3600, burst=2)
    clock = FakeClock()
    lim = limiter(slow, clock=clock, idle_ttl=1.0)
    await acquire(lim)
    await acquire(lim)
    clock.advance(10)
    await acquire(lim, "other")
    assert not await acquire(lim)


async def test_last_token_race_has_exactly_one_winner() -> None:
    lim = limiter()
    for _ in range(9):
        assert await acquire(lim)
    results = await asyncio.gather(*(acquire(lim) for _ in range(50)))
    assert sum(results) == 1
