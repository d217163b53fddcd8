"""An agent's own short-lived token: fetched from the control plane over mTLS, cached, and
refreshed before it expires (single flight: concurrent callers share one fetch). A failed fetch is
not retried by every call: until a jittered, growing delay has passed, callers get the last error."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import grpc

from agentmesh.clock import Clock
from agentmesh.errors import TokenError, Unavailable
from agentmesh.runtime.renewal import backoff
from agentmesh.v1 import control_pb2, control_pb2_grpc

__all__ = ["AgentTokenSource", "control_fetcher"]

Fetch = Callable[[], Awaitable[tuple[str, float]]]


class AgentTokenSource:
    """Returns the cached token until ``refresh_at`` (a fraction of its lifetime) has passed."""

    def __init__(self, fetch: Fetch, *, clock: Clock = time.time, refresh_at: float = 0.75) -> None:
        self._fetch = fetch
        self._clock = clock
        self._refresh_at = refresh_at
        self._token: str | None = None
        self._issued = 0.0
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: Unavailable | None = None

    def _fresh(self, now: float) -> bool:
        return self._token is not None and now < self._issued + (self._expires - self._issued) * self._refresh_at

    @property
    def expires_at(self) -> float | None:
        """When the token at hand expires (seconds since the epoch); None before the first one."""
        return self._expires if self._token is not None else None

    def cached(self) -> str | None:
        """The current token while it is fresh, without waiting; None when it must be (re)fetched."""
        return self._token if self._fresh(self._clock()) else None

    async def token(self) -> str:
        if self._fresh(self._clock()):
            assert self._token is not None
            return self._token
        async with self._lock:
            now = self._clock()
            if not self._fresh(now):
                if now < self._retry_at and self._last_error is not None:
                    if self._token is not None and now < self._expires:
                        return self._token
                    raise self._last_error
                try:
                    token, expires = await self._fetch()
                except Unavailable as e:
                    self._failures += 1
                    self._last_error = e
                    self._retry_at = now + backoff(self._failures, rand=random.random())  # noqa: S311 (jitter, not a secret)
                    if self._token is not None and now < self._expires:
                        return self._token  # control plane briefly away: the current token still holds
                    raise
                self._token, self._issued, self._expires = token, now, expires
                self._failures, self._last_error = 0, None
            assert self._token is not None
            return self._token


def control_fetcher(channel: grpc.aio.Channel, *, timeout: float = 5.0) -> Fetch:
    """Fetches this agent's token from ``agentmesh.v1.TokenService`` on an mTLS channel to the control."""
    stub = control_pb2_grpc.TokenServiceStub(channel)

    async def fetch() -> tuple[str, float]:
        try:
            res = await stub.IssueAgentToken(control_pb2.AgentTokenRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                raise TokenError(f"the control plane refused to issue a token: {e.details()}") from None
            raise Unavailable(f"control plane unavailable ({e.code().name})") from None
        return res.token, float(res.expires_at)

    return fetch
