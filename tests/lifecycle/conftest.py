"""Fixtures of the lifecycle tests (real ``agentmesh up`` processes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from upkit import Up


@pytest.fixture
def started() -> Iterator[list[Up]]:
    """The ``up`` processes a test starts: all ended afterwards, with everything they started."""
    ups: list[Up] = []
    yield ups
    for up in ups:
        up.close()
