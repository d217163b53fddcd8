"""Token-bucket math. Pure: the caller passes the time and keeps the state.

A bucket holds at most ``burst`` tokens and gains ``rate`` tokens per second. A new bucket starts
full. A call costing ``cost`` tokens is allowed when the bucket holds them; a refused call does not
consume anything. The Redis backend runs the same math in Lua (see ``redis.py``); keep them in step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = ["EPSILON", "BucketState", "TakeResult", "take"]

#: Float slack, in tokens. Clock readings near the epoch (~1.7e9 s) are only precise to ~2.4e-7 s, so
#: "0.1 s later at 10/s" can compute as 0.999998 tokens; a bucket this close to a token has it.
EPSILON = 1e-3


class BucketState(NamedTuple):  # (made per call: a NamedTuple is cheaper than a frozen dataclass)
    tokens: float
    updated: float  # the clock reading ``tokens`` was computed at


class TakeResult(NamedTuple):
    allowed: bool
    state: BucketState
    remaining: int  # whole tokens left after this call
    retry_after: float  # seconds until ``cost`` tokens are available (0 when allowed)
    reset: float  # seconds until the bucket is full again


def take(state: BucketState | None, now: float, rate: float, burst: int, cost: int = 1) -> TakeResult:
    """Refills ``state`` up to ``now`` and takes ``cost`` tokens if they are there."""
    if rate <= 0 or burst < 1:
        raise ValueError("rate must be > 0 and burst >= 1")
    if not 0 <= cost <= burst:
        raise ValueError(f"cost must be between 0 and the burst ({burst}), got {cost}")
    if state is None:
        tokens = float(burst)
    else:
        elapsed = max(0.0, now - state.updated)  # a clock that steps back refills nothing
        tokens = min(float(burst), state.tokens + elapsed * rate)
    if tokens + EPSILON >= cost:
        tokens = max(0.0, tokens - cost)
        allowed, retry_after = True, 0.0
    else:
        allowed, retry_after = False, (cost - tokens) / rate
    remaining = math.floor(tokens + EPSILON)
    reset = (burst - tokens) / rate
    return TakeResult(allowed, BucketState(tokens, now), remaining, retry_after, reset)
