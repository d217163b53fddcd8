"""Shared pieces of the property-based tests (hypothesis): the two profiles, a per-example time limit."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

__all__ = ["Hang", "profiles", "run", "time_limit"]


def profiles(fast: int, slow: int) -> list[Any]:
    """``fast`` examples with a fixed seed (every run, nothing written to the repo), and a ``slow`` random run
    of ``slow`` examples (marked slow: tests/conftest.py runs it under CI=true or AGENTMESH_SLOW=1)."""
    quick = settings(max_examples=fast, deadline=None, database=None, derandomize=True, print_blob=True,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    long = settings(quick, max_examples=slow, derandomize=False)
    return [pytest.param(quick, id="fast"),
            pytest.param(long, id="slow", marks=pytest.mark.slow)]


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raises Hang in the block after ``seconds`` (SIGALRM: the main thread, POSIX)."""
    def expire(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"no answer within {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run(profile: settings, strategy: st.SearchStrategy[Any], check: Callable[[Any], None]) -> None:
    settings(profile)(given(strategy)(check))()
