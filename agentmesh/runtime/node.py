"""A mesh member in one process: identity, both chains, its token, and channels to the other agents.

    node = MeshNode(load_config("mesh.yaml"), "summarizer")
    await node.start()                      # keys + revocations from the control plane
    server = node.server()                  # mTLS + the whole server chain
    server.add(agent_pb2_grpc.add_AgentServicer_to_server, Summarizer(node), "agentmesh.v1.Agent")
    await server.start(node.address)
    validator = node.stub("validator", agent_pb2_grpc.AgentStub)   # client chain attached
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from agentmesh.audit import AuditSink, build_audit
from agentmesh.clock import Clock
from agentmesh.config import MeshConfig
from agentmesh.errors import MeshError, Unavailable
from agentmesh.guard import PayloadGuard
from agentmesh.interceptors.chain import server_chain
from agentmesh.interceptors.client import ClientSteps
from agentmesh.interceptors.identity import peer_checks
from agentmesh.policy import PolicyEngine
from agentmesh.ratelimit import RateLimiter, build_limiter
from agentmesh.runtime.channel import MeshChannels, secure_channel
from agentmesh.runtime.credentials import IdentityFiles, member_identity
from agentmesh.runtime.server import MeshServer
from agentmesh.runtime.tokensource import AgentTokenSource, control_fetcher
from agentmesh.tokens import KeySet, RevokedSet, keys_from_config, verifier_from_config
from agentmesh.v1 import control_pb2, control_pb2_grpc

__all__ = ["MeshNode"]

log = logging.getLogger("agentmesh.node")
T = TypeVar("T")
CHANNEL_OPTIONS = (
    ("grpc.lb_policy_name", "round_robin"),
    # an agent that comes back is reachable again within seconds (gRPC's default backoff grows to 120 s)
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
)


class MeshNode:
    """One mesh member (agent, bridge or tool): its identity, both chains, its own bound token, and
    channels to the other members; ``start()`` syncs keys and revocations with the control plane."""

    def __init__(self, config: MeshConfig, name: str, *, clock: Clock = time.time, sink: AuditSink | None = None,
                 limiter: RateLimiter | None = None, check_every: float = 1.0) -> None:
        self.config = config
        self.name = name
        self.clock = clock
        self.spiffe_id = config.spiffe_id(name)
        self.identity = member_identity(config, name, check_every=check_every)
        self.identities = peer_checks(config, self.identity, check_every=check_every, clock=clock)
        self.sink = sink if sink is not None else build_audit(config.audit, service_name=name)
        self.revoked = RevokedSet()
        self._external_keys, self._jwks_caches = keys_from_config(config.tokens, None, clock=clock)
        self.verifier = verifier_from_config(config.tokens, self._external_keys, revoked=self.revoked, clock=clock)
        self.policy = PolicyEngine(config.policy, config.trust_domain, max_depth=config.tokens.max_delegation_depth)
        self.limiter = limiter if limiter is not None else build_limiter(config.rate_limits)
        self.guard = PayloadGuard(config.guard)
        self._controls: dict[str, tuple[grpc.aio.Channel, AgentTokenSource]] = {}  # by certificate thumbprint
        self.channels = MeshChannels(self.identity, self._target, steps=self._client_steps, options=CHANNEL_OPTIONS)
        self._refresher: asyncio.Task[None] | None = None
        self._keys_json = ""

    # ------------------------------------------------------------------ wiring
    @property
    def address(self) -> str:
        return self.config.agent(self.name).address

    def _target(self, name: str) -> str:
        agent = self.config.agent(name)
        if not agent.replicas:
            return agent.address
        return "ipv4:" + ",".join((agent.address, *agent.replicas))

    def _control_for(self, files: IdentityFiles) -> tuple[grpc.aio.Channel, AgentTokenSource]:
        """The control-plane channel and token source of one identity snapshot: the token it fetches
        is bound to exactly the certificate the snapshot's channels present."""
        hit = self._controls.get(files.thumbprint)
        if hit is None:
            channel = secure_channel(self.identity, self.config.control.address, self.config.control.name,
                                     files=files)
            hit = (channel, AgentTokenSource(control_fetcher(channel), clock=self.clock))
            self._controls[files.thumbprint] = hit
        return hit

    @property
    def tokens(self) -> AgentTokenSource:
        """This member's own token source, for its current certificate."""
        return self._control_for(self.identity.files)[1]

    def _client_steps(self, target: str, files: IdentityFiles) -> ClientSteps:
        return ClientSteps(self.name, target, self._control_for(files)[1], self.sink.tracer,
                           default_timeout=self.config.bridge.default_timeout)

    def server(self, **kw: Any) -> MeshServer:
        """An mTLS server with the whole server chain, for this node's identity."""
        chain = server_chain(self.name, sink=self.sink, audit_required=self.config.audit.required,
                             identities=self.identities, verifier=self.verifier,
                             mesh_issuer=self.config.tokens.issuer, policy=self.policy,
                             limiter=self.limiter, guard=self.guard)
        kw.setdefault("max_connection_age", self.config.max_connection_age)
        kw.setdefault("grace", self.config.grace_period)
        return MeshServer(self.identity, interceptors=chain, **kw)

    def stub(self, name: str, stub_class: Callable[[grpc.aio.Channel], T]) -> T:
        """A generated stub for agent ``name``; calls go through the client chain over mTLS."""
        return self.channels.stub(name, stub_class)

    # ------------------------------------------------------------------ control plane sync
    async def sync(self) -> None:
        """Fetches the mesh token keys and the token revocation list from the control plane."""
        stub = control_pb2_grpc.TokenServiceStub(self._control_for(self.identity.files)[0])
        try:
            keys = await stub.GetKeySet(control_pb2.KeySetRequest(), timeout=5)
            revoked = await stub.ListRevoked(control_pb2.RevokedTokensRequest(), timeout=5)
        except grpc.aio.AioRpcError as e:
            raise Unavailable(f"control plane at {self.config.control.address} unavailable ({e.code().name})") \
                from None
        if keys.jwks_json != self._keys_json:
            mesh = KeySet.from_jwks(json.loads(keys.jwks_json), keys.issuer)
            self.verifier.keys = KeySet.merge(mesh, self._external_keys)
            self.verifier.clear_cache()
            self._keys_json = keys.jwks_json
        self.revoked.update(revoked.jti)

    async def start(self, *, timeout: float = 30.0) -> None:
        """Syncs with the control plane (retrying until ``timeout``), then keeps syncing in the background."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            try:
                await self.sync()
                break
            except Unavailable:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        for cache in self._jwks_caches:
            await asyncio.to_thread(cache.refresh_if_stale)
        await self._own_token()
        self._refresher = asyncio.create_task(self._refresh_loop())

    async def _own_token(self) -> None:
        """Fetches (or refreshes, past 3/4 of its life) this member's token ahead of its calls."""
        try:
            await self.tokens.token()
        except MeshError as e:
            log.warning("%s: no token from the control plane yet: %s", self.name, e.message)

    async def _refresh_loop(self) -> None:
        every = self.config.tokens.revocation_refresh
        while True:
            await asyncio.sleep(every)
            try:
                await self.sync()
            except Unavailable as e:
                log.warning("%s: %s; keeping the last keys and revocations", self.name, e.message)
            await self._own_token()
            for cache in self._jwks_caches:
                with contextlib.suppress(Exception):  # a failed JWKS fetch keeps the cached keys
                    await asyncio.to_thread(cache.refresh_if_stale)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self.channels.close()
        for channel, _ in self._controls.values():
            await channel.close()
        self._controls.clear()
        await self.limiter.aclose()
        self.sink.shutdown(timeout=5)
