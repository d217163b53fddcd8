from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

# tests/ helpers (support.py, redis_server.py) are imported as top-level modules
sys.path.insert(0, str(Path(__file__).parent))

#: tests marked slow (long property runs, lifecycles over several certificate lifetimes) run under CI
#: (.ci/run sets CI=true) or on request, and are skipped with that reason otherwise, so `make test` stays short
RUN_SLOW = os.environ.get("CI") == "true" or os.environ.get("AGENTMESH_SLOW") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if RUN_SLOW:
        return
    skip = pytest.mark.skip(reason="slow: runs under CI=true (.ci/run) or with AGENTMESH_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """One real redis-server for the session (skipped, with the reason, when it is not installed; never
    under CI=true: see redis_server.start_redis)."""
    from redis_server import start_redis

    with start_redis() as url:
        yield url


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The session's redis-server, emptied before each test."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    yield redis_server


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Any]:
    """A plain asyncio Redis client of the session's server (strings decoded)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()
