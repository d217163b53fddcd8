"""The pure token-bucket math, with explicit times."""

from __future__ import annotations

import pytest

from agentmesh.clock import FakeClock
from agentmesh.ratelimit.bucket import BucketState, take


def test_new_bucket_starts_full_and_allows_burst() -> None:
    state = None
    results = []
    for _ in range(5):
        r = take(state, 100.0, rate=1.0, burst=5)
        state = r.state
        results.append((r.allowed, r.remaining))
    assert results == [(True, 4), (True, 3), (True, 2), (True, 1), (True, 0)]
    r = take(state, 100.0, rate=1.0, burst=5)
    assert not r.allowed
    assert r.remaining == 0
    assert r.retry_after == pytest.approx(1.0)
    assert r.reset == pytest.approx(5.0)


def test_refill_at_rate() -> None:
    empty = BucketState(0.0, 10.0)
    assert not take(empty, 10.05, rate=10.0, burst=10).allowed
    r = take(empty, 10.1, rate=10.0, burst=10)
    assert r.allowed and r.remaining == 0
    r = take(empty, 10.35, rate=10.0, burst=10)
    assert r.allowed and r.remaining == 2


def test_refill_with_epoch_sized_clock_readings() -> None:
    """0.1 s at 10/s is one token even where floats near 1.7e9 round the elapsed time down."""
    clock = FakeClock()
    state = BucketState(0.0, clock())
    clock.advance(0.1)
    assert take(state, clock(), rate=10.0, burst=10).allowed


def test_never_above_burst() -> None:
    r = take(BucketState(1.0, 0.0), 1_000_000.0, rate=100.0, burst=3)
    assert r.state.tokens == 2.0
    assert r.remaining == 2
    assert r.reset == pytest.approx(0.01)


def test_refused_call_consumes_nothing() -> None:
    state = BucketState(0.5, 0.0)
    r = take(state, 0.0, rate=1.0, burst=2)
    assert not r.allowed
    assert r.state.tokens == 0.5
    assert r.retry_after == pytest.approx(0.5)


def test_clock_stepping_back_refills_nothing() -> None:
    r = take(BucketState(0.0, 50.0), 40.0, rate=1.0, burst=2)
    assert not r.allowed
    assert r.state.tokens == 0.0


def test_cost() -> None:
    r = take(None, 0.0, rate=1.0, burst=5, cost=3)
    assert r.allowed and r.remaining == 2
    r = take(r.state, 0.0, rate=1.0, burst=5, cost=3)
    assert not r.allowed and r.retry_after == pytest.approx(1.0)


@pytest.mark.parametrize(("rate", "burst", "cost"), [(0.0, 1, 1), (1.0, 0, 1), (1.0, 2, 3), (1.0, 2, -1)])
def test_invalid_arguments(rate: float, burst: int, cost: int) -> None:
    with pytest.raises(ValueError):
        take(None, 0.0, rate=rate, burst=burst, cost=cost)
