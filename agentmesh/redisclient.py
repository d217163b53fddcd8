"""The Redis client of the shared backends (rate-limit buckets, A2A task owners), made in one place.

``redis`` is imported here, when a Redis backend is built, and nowhere at module level: importing it
costs ~200 ms, which every process (each ``agentmesh`` command, each member) would otherwise pay at
start-up whether it uses Redis or not.
"""

from __future__ import annotations

from typing import Any

__all__ = ["connect"]


def connect(url: str, timeout: float, *, decode_responses: bool = False) -> tuple[Any, tuple[type[BaseException], ...]]:
    """A client of ``url`` that makes one attempt per command (the caller's deadline is short), each
    bounded by ``timeout`` seconds; and the exceptions a command may raise (Redis's own, and a
    connection's). Raises ValueError for a URL the client refuses (never echo it: it may hold a password)."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError

    try:
        client = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                         retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
                                         decode_responses=decode_responses)
    except (ValueError, RedisError):
        raise ValueError("invalid Redis URL") from None
    return client, (RedisError, OSError, TimeoutError, ValueError, TypeError)
