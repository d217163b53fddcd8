from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis_server import start_redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """One real redis-server for the session."""
    with start_redis() as url:
        yield url


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The session's redis-server, emptied before each test."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    yield redis_server
