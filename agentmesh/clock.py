"""The clock type every time-dependent decision takes, so tests can inject one."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Clock", "FakeClock"]

#: Returns seconds since the epoch (wall clock) as a float.
Clock = Callable[[], float]


class FakeClock:
    """A manually advanced clock for tests and simulations."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
