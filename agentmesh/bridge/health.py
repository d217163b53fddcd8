"""Readiness: every routed agent answers ``grpc.health.v1.Health/Check`` over mTLS, within a short timeout.

Probes use plain mTLS channels without the client chain (health is exempt from the server chain,
and a probe needs no token or audit span). A result is reused for ``ttl`` seconds so a burst of
probes does not fan out into a burst of gRPC calls.
"""

from __future__ import annotations

import asyncio
import time

from agentmesh.config import MeshConfig
from agentmesh.runtime.channel import MeshChannels
from agentmesh.runtime.credentials import AgentIdentity
from agentmesh.runtime.healthcheck import SERVING, grpc_health
from agentmesh.runtime.servers import dial_target

__all__ = ["Readiness"]


class Readiness:
    def __init__(self, config: MeshConfig, identity: AgentIdentity, agents: tuple[str, ...], *,
                 timeout: float = 1.0, ttl: float = 1.0) -> None:
        self.agents = agents
        self.timeout = timeout
        self.ttl = ttl
        self._channels = MeshChannels(identity, lambda name: dial_target(config, name))
        self._last: tuple[float, list[str]] | None = None
        self._lock = asyncio.Lock()

    async def unready(self) -> list[str]:
        """The agents that did not report SERVING (sorted); empty when all are ready."""
        async with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < self.ttl:
                return self._last[1]
            results = await asyncio.gather(*(self._check(a) for a in self.agents))
            down = sorted(a for a, ok in zip(self.agents, results, strict=True) if not ok)
            self._last = (time.monotonic(), down)
            return down

    async def _check(self, agent: str) -> bool:
        status = await grpc_health(self._channels.channel(agent), timeout=self.timeout, wait_for_ready=False)
        return status == SERVING

    async def close(self) -> None:
        await self._channels.close()
