"""The bridge's transaction tokens: one per HTTP request by default; with ``bridge.txn_reuse`` set, the
same client token calling the same route from the same address within that window shares one.

Reuse trades audit granularity for throughput: every exchange is a round trip to the control plane (about
1.5 ms of its CPU and as much again at the bridge, see ``make bench``), and a reused transaction token also
lets the agents' caches hit (its hop link is reused too). Nothing else changes: the client token still stops
at the bridge, revoking it still ends the transaction, and the request context then holds no request id
(``x-request-id`` still reaches the agents as metadata).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agentmesh.clock import Clock

__all__ = ["Transactions"]

Exchange = Callable[[str, str, dict[str, str]], Awaitable[Any]]  # (client token, route, rctx) -> TransactionToken
MAX_REUSED = 10_000
MARGIN = 30.0  # a reused transaction token has at least this many seconds left


class Transactions:
    def __init__(self, exchange: Exchange, *, reuse: float = 0.0, clock: Clock = time.time) -> None:
        self._exchange = exchange
        self.reuse = reuse
        self.clock = clock
        self._held: dict[tuple[bytes, str, str], tuple[Any, float]] = {}

    async def token(self, client_token: str, *, route: str, request_id: str, client_ip: str | None) -> Any:
        """The transaction token (``TransactionToken`` reply) for one request."""
        context = {"req_ip": client_ip} if client_ip else {}
        if self.reuse <= 0:
            return await self._exchange(client_token, route, {"request_id": request_id, **context})
        key = (hashlib.sha256(client_token.encode()).digest(), route, client_ip or "")
        now = self.clock()
        held = self._held.get(key)
        if held is not None and now < held[1]:
            return held[0]
        reply = await self._exchange(client_token, route, context)
        until = min(now + self.reuse, reply.expires_at - MARGIN)
        if until > now:
            if len(self._held) >= MAX_REUSED:
                self._held = {k: v for k, v in self._held.items() if v[1] > now}
                if len(self._held) >= MAX_REUSED:
                    self._held.clear()
            self._held[key] = (reply, until)
        return reply

    def clear(self) -> None:
        self._held.clear()
