"""The Redis limiter against a real redis-server (tests/redis_server.py); nothing here sleeps."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis_server import free_port, start_redis

from agentmesh.config import RateRule
from agentmesh.errors import Unavailable
from agentmesh.ratelimit import UNLIMITED, RedisLimiter

INVOKE = "/agentmesh.v1.Agent/Invoke"
CLIENTS = RateRule("clients", rate=5.0, burst=10, roles=("client",))


async def acquire(lim: RedisLimiter, principal: str = "alice") -> bool:
    return (await lim.acquire(principal, "ingestor", INVOKE, ("client",))).allowed


@pytest.fixture
async def lim(redis_url: str) -> AsyncIterator[RedisLimiter]:
    limiter = RedisLimiter(redis_url, (CLIENTS,))
    yield limiter
    await limiter.aclose()


async def test_burst_then_refused(lim: RedisLimiter) -> None:
    assert [await acquire(lim) for _ in range(10)] == [True] * 10
    d = await lim.acquire("alice", "ingestor", INVOKE, ("client",))
    assert not d.allowed
    assert (d.rule, d.limit, d.remaining, d.degraded) == ("clients", 10, 0, False)
    assert 0.0 < d.retry_after <= 0.2
    assert 1.9 < d.reset <= 2.0


async def test_no_rule_means_unlimited(lim: RedisLimiter, raw: aioredis.Redis) -> None:
    assert await lim.acquire("alice", "ingestor", INVOKE, ()) == UNLIMITED
    assert await raw.dbsize() == 0


async def test_replicas_share_one_bucket(redis_url: str) -> None:
    a, b = RedisLimiter(redis_url, (CLIENTS,)), RedisLimiter(redis_url, (CLIENTS,))
    try:
        got = [await acquire(a if i % 2 else b) for i in range(10)]
        assert got == [True] * 10
        assert not await acquire(a)
        assert not await acquire(b)
        assert await acquire(b, "bob")  # identities stay isolated
    finally:
        await a.aclose()
        await b.aclose()


async def test_keys_have_a_ttl_of_about_the_refill_time(lim: RedisLimiter, raw: aioredis.Redis) -> None:
    await acquire(lim)
    ttl = await raw.pttl(lim.key("clients", "alice"))
    assert 0 < ttl <= 200 + 1000  # one token at 5/s, plus the margin


async def test_bucket_time_is_the_servers(lim: RedisLimiter, raw: aioredis.Redis,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Local clocks are irrelevant: the stored timestamp is Redis TIME, and refill follows it."""
    monkeypatch.setattr(time, "time", lambda: 0.0)  # a replica with a wildly wrong clock
    for _ in range(10):
        await acquire(lim)
    assert not await acquire(lim)
    key = lim.key("clients", "alice")
    sec, usec = await raw.time()
    stored = int(str(await raw.hget(key, "ts")))
    assert abs(stored - (sec * 1_000_000 + usec)) < 5_000_000
    # Pretend the last update was one server-second ago: 5 tokens have come back.
    await raw.hset(key, "ts", str(stored - 1_000_000))
    assert [await acquire(lim) for _ in range(6)] == [True] * 5 + [False]


async def test_rule_names_with_colons_cannot_collide(lim: RedisLimiter) -> None:
    assert lim.key("a:b", "c") != lim.key("a", "b:c")


async def test_last_token_race_has_exactly_one_winner(redis_url: str) -> None:
    # a rule that refills one token a minute: on a loaded machine the race must not outlast a refill (5/s refilled
    # one in 200 ms, and then two winners were right)
    slow = RateRule("clients", rate=1 / 60, burst=10, roles=("client",))
    a, b = RedisLimiter(redis_url, (slow,), timeout=5.0), RedisLimiter(redis_url, (slow,), timeout=5.0)
    try:
        for _ in range(9):
            assert await acquire(a)
        results = await asyncio.gather(*(acquire(a if i % 2 else b) for i in range(40)))
        assert sum(results) == 1
    finally:
        await a.aclose()
        await b.aclose()


async def test_script_is_reloaded_after_script_flush(lim: RedisLimiter, raw: aioredis.Redis) -> None:
    assert await acquire(lim)
    await raw.script_flush()
    assert await acquire(lim)


# ------------------------------------------------------------------------ failure modes


async def test_open_when_nothing_listens() -> None:
    lim = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", (CLIENTS,), failure_mode="open", timeout=0.5)
    try:
        d = await lim.acquire("alice", "ingestor", INVOKE, ("client",))
        assert d.allowed and d.degraded
        assert (d.rule, d.limit) == ("clients", 10)
    finally:
        await lim.aclose()


async def test_closed_when_nothing_listens() -> None:
    lim = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", (CLIENTS,), failure_mode="closed", timeout=0.5)
    try:
        with pytest.raises(Unavailable, match=r"^rate-limit backend unavailable$") as e:
            await acquire(lim)
        assert e.value.__cause__ is None and e.value.__suppress_context__
    finally:
        await lim.aclose()


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_server_stopped_under_a_live_limiter(mode: str) -> None:
    with start_redis() as url:
        lim = RedisLimiter(url, (CLIENTS,), failure_mode=mode, timeout=0.5)  # type: ignore[arg-type]
        assert await acquire(lim)
    try:
        if mode == "open":
            d = await lim.acquire("alice", "ingestor", INVOKE, ("client",))
            assert d.allowed and d.degraded
        else:
            with pytest.raises(Unavailable):
                await acquire(lim)
    finally:
        await lim.aclose()


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_a_server_that_never_answers_times_out(mode: str) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # accepts connections (kernel backlog) but never replies
        port = silent.getsockname()[1]
        lim = RedisLimiter(f"redis://127.0.0.1:{port}/0", (CLIENTS,), failure_mode=mode,  # type: ignore[arg-type]
                           timeout=0.1)
        try:
            started = time.perf_counter()
            if mode == "open":
                assert (await lim.acquire("alice", "ingestor", INVOKE, ("client",))).degraded
            else:
                with pytest.raises(Unavailable):
                    await acquire(lim)
            assert time.perf_counter() - started < 2.0
        finally:
            await lim.aclose()
