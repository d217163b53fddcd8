"""A mesh member in one process: identity, both chains, its token, and channels to the other agents.

    node = MeshNode(load_config("mesh.yaml"), "summarizer")
    await node.start()                      # trust data from the control plane; renewal in the background
    server = node.server()                  # mTLS + the whole server chain
    server.add(agent_pb2_grpc.add_AgentServicer_to_server, Summarizer(node), "agentmesh.v1.Agent")
    await server.start(node.address)
    validator = node.stub("validator", agent_pb2_grpc.AgentStub)   # client chain attached
    txn = await node.exchange(client_token)  # at the edge: then `with delegating(txn.token): ...`

A member never needs the CA directory: the control plane streams it the signed CRL, revoked token
ids, revoked members, the token key set and the trust bundle (``IdentityService.WatchTrust``), and
renews its certificate (``IdentityService.Renew``) at about half its lifetime. Every change ends the
calls it refuses (in both directions: calls this member serves, and its connections to a revoked member).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from agentmesh.a2a.ownership import TaskOwners, build_task_owners
from agentmesh.audit import AuditSink, build_audit
from agentmesh.audit.metrics import CERT_EXPIRY, REVOCATION_AGE, TOKEN_EXPIRY
from agentmesh.audit.otlpmetrics import OtlpMetrics, otlp_metrics
from agentmesh.audit.prom import MetricsEndpoint, member_registry, metrics_address
from agentmesh.clock import Clock
from agentmesh.config import MeshConfig
from agentmesh.errors import MeshError, PKIError, Unavailable
from agentmesh.guard import PayloadGuard
from agentmesh.interceptors.active import ActiveCalls
from agentmesh.interceptors.chain import server_chain
from agentmesh.interceptors.client import ClientSteps
from agentmesh.interceptors.identity import PeerIdentityCache
from agentmesh.policy import PolicyEngine
from agentmesh.ratelimit import RateLimiter, build_limiter
from agentmesh.runtime.channel import MeshChannels, secure_channel
from agentmesh.runtime.credentials import IdentityFiles, install_bundle, member_identity
from agentmesh.runtime.delegation import MemberDelegation, rpc_error
from agentmesh.runtime.publisher import snapshot_of
from agentmesh.runtime.renewal import Renewer, SignedIdentity, backoff
from agentmesh.runtime.server import MeshServer
from agentmesh.runtime.servers import PresentedCertificates
from agentmesh.runtime.tokensource import AgentTokenSource, control_fetcher
from agentmesh.runtime.truststate import TrustState
from agentmesh.tokens import KeySet, RevokedSet, keys_from_config, verifier_from_config
from agentmesh.tokens.jwks import refresh_forever
from agentmesh.trust import TrustSnapshot, check_order
from agentmesh.v1 import control_pb2, control_pb2_grpc

__all__ = ["MeshNode"]

log = logging.getLogger("agentmesh.node")
T = TypeVar("T")
CHANNEL_OPTIONS = (
    ("grpc.lb_policy_name", "round_robin"),
    # an agent (or the control plane) that comes back is reachable again within seconds
    # (gRPC's default reconnect backoff grows to 120 s)
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 3000),
)


class MeshNode:
    """One mesh member (agent, bridge or tool): its identity, both chains, its own bound token, and
    channels to the other members; ``start()`` takes the trust data from the control plane and keeps
    following it, and keeps the member's certificate renewed."""

    def __init__(self, config: MeshConfig, name: str, *, clock: Clock = time.time, sink: AuditSink | None = None,
                 limiter: RateLimiter | None = None, check_every: float = 1.0, renew: bool = True) -> None:
        self.config = config
        self.name = name
        self.clock = clock
        self.spiffe_id = config.spiffe_id(name)
        self.identity = member_identity(config, name, check_every=check_every)
        self.trust = TrustState(config.revocation, clock=clock, owner=name)
        self.identities = PeerIdentityCache(config.trust_domain, trust=self.trust, clock=clock)
        self.active = ActiveCalls()
        self.sink = sink if sink is not None else build_audit(config.audit, service_name=name)
        self.sink.metrics.know(members=config.members(), issuers=[i.issuer for i in config.tokens.issuers])
        self.metrics_endpoint: MetricsEndpoint | None = None  # serving /metrics, after start()
        self.metrics_push: OtlpMetrics | None = None  # pushing them over OTLP (metrics.otlp_endpoint), after start()
        self.revoked = RevokedSet()
        self._external_keys, self._jwks_caches = keys_from_config(config.tokens, None, clock=clock)
        self.verifier = verifier_from_config(config.tokens, self._external_keys, revoked=self.revoked, clock=clock)
        self.delegation = MemberDelegation(config, name, self.identity, self.trust, self.verifier,
                                           control=lambda: self._control_for(self.identity.files)[0], clock=clock)
        self.checks = self.delegation.checks
        self.exchange = self.delegation.exchange  # the Transaction Token Service, at the edge
        self.narrow = self.delegation.narrow  # ... and inside a delegated call
        self.policy = PolicyEngine(config.policy, config.trust_domain, max_depth=config.tokens.max_delegation_depth)
        self.limiter = limiter if limiter is not None else build_limiter(config.rate_limits)
        self.guard = PayloadGuard(config.guard)
        self._task_owners: TaskOwners | None = None  # A2A task owners (built with the first server)
        # by certificate thumbprint and trust bundle: the identity snapshot its channel was made with
        self._controls: dict[str, tuple[grpc.aio.Channel, AgentTokenSource]] = {}
        self.servers = PresentedCertificates(config, name, self.identity, self.trust)
        self.channels = MeshChannels(self.identity, self.servers.target, steps=self._client_steps,
                                     options=CHANNEL_OPTIONS, refused=self.trust.member_revoked,
                                     on_new=lambda name: self._check_now.set())
        self._check_now = asyncio.Event()
        self.renewer = Renewer(self.identity, self._sign, owner=name, clock=clock, on_renewed=self._own_token) \
            if renew else None
        self._tasks: list[asyncio.Task[None]] = []
        self._keys_json = ""
        self._revoked_jtis: frozenset[str] = frozenset()
        self._revoked_serials: frozenset[int] = frozenset()
        self._first_update = asyncio.Event()
        self._refused: str | None = None  # why the control plane refused this member at start
        self.trust.on_update(self._apply)
        self._watch_gauges()

    # ------------------------------------------------------------------ wiring
    @property
    def address(self) -> str:
        return self.config.agent(self.name).address

    def _watch_gauges(self) -> None:
        """The values read when this member's metrics are scraped (in the endpoint's thread: nothing
        here makes a channel or waits)."""
        metrics, clock = self.sink.metrics, self.clock
        metrics.watch(CERT_EXPIRY, lambda: self.identity.files.leaf.not_valid_after_utc.timestamp() - clock())

        def token_expiry() -> float | None:
            sources = [source for _, source in list(self._controls.values())]
            expires = sources[-1].expires_at if sources else None
            return None if expires is None else expires - clock()

        def revocation_age() -> float | None:
            snapshot = self.trust.snapshot
            return None if snapshot is None else clock() - snapshot.received_at

        metrics.watch(TOKEN_EXPIRY, token_expiry)
        metrics.watch(REVOCATION_AGE, revocation_age)

    # ------------------------------------------------------------------ the certificates servers present
    async def _check_servers_loop(self) -> None:
        """Also ends calls in flight that aging data now refuses (strict mode) while no update arrives."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), self.config.tokens.revocation_refresh)
            self._check_now.clear()
            self.active.sweep(self.trust.refusal)
            await self.servers.check(self.channels)

    def _control_for(self, files: IdentityFiles) -> tuple[grpc.aio.Channel, AgentTokenSource]:
        """The control-plane channel and token source of one identity snapshot: the token it fetches
        is bound to exactly the certificate the snapshot's channels present. Those of earlier
        certificates are closed once nothing uses them (their calls in flight get a grace period)."""
        key = files.thumbprint + hashlib.sha256(files.bundle).hexdigest()  # a new root (rollover): a new channel
        hit = self._controls.get(key)
        if hit is None:
            channel = secure_channel(self.identity, self.config.control.address, self.config.control.name,
                                     files=files, options=CHANNEL_OPTIONS)
            hit = (channel, AgentTokenSource(control_fetcher(channel), clock=self.clock))
            for thumbprint, (old, _) in list(self._controls.items()):
                del self._controls[thumbprint]
                self.channels.retire(old, grace=60.0)
            self._controls[key] = hit
        return hit

    @property
    def tokens(self) -> AgentTokenSource:
        """This member's own token source, for its current certificate."""
        return self._control_for(self.identity.files)[1]

    def _client_steps(self, target: str, files: IdentityFiles) -> ClientSteps:
        return ClientSteps(self.name, target, self._control_for(files)[1], self.sink.tracer,
                           hops=self.delegation.hop_signer(files),
                           target_id=str(self.config.spiffe_id(target)),
                           address=self.servers.target(target))  # (what the channel dials: its spans' server.address)

    def server(self, **kw: Any) -> MeshServer:
        """An mTLS server with the whole server chain, for this node's identity; it serves reflection,
        which the policy decides like any method."""
        if self._task_owners is None:  # one store per node: its servers share the owners of its A2A tasks
            agent = self.config.agents.get(self.name)
            self._task_owners = build_task_owners(self.config.rate_limits, agent.a2a if agent else None,
                                                  agent=self.name, clock=self.clock)
        chain = server_chain(self.name, sink=self.sink, audit_required=self.config.audit.required,
                             identities=self.identities, checks=self.checks,
                             snapshot=lambda: self.trust.snapshot, policy=self.policy,
                             limiter=self.limiter, guard=self.guard, active=self.active, me=str(self.spiffe_id),
                             tasks=self._task_owners)
        kw.setdefault("max_connection_age", self.config.max_connection_age)
        kw.setdefault("grace", self.config.grace_period)
        kw.setdefault("max_concurrent_streams", self.config.max_concurrent_streams)
        kw.setdefault("reflection", True)
        return MeshServer(self.identity, interceptors=chain, **kw)

    def stub(self, name: str, stub_class: Callable[[grpc.aio.Channel], T]) -> T:
        """A generated stub for agent ``name``; calls go through the client chain over mTLS."""
        return self.channels.stub(name, stub_class)

    # ------------------------------------------------------------------ trust data from the control plane
    def _apply(self, snapshot: TrustSnapshot) -> None:
        """What follows from new (or re-confirmed) trust data: key set, revoked jtis, calls to end."""
        if snapshot.jwks_json and snapshot.jwks_json != self._keys_json:
            mesh = KeySet.from_jwks(json.loads(snapshot.jwks_json), snapshot.issuer)
            self.verifier.keys = KeySet.merge(mesh, self._external_keys)
            self.verifier.clear_cache()
            self._keys_json = snapshot.jwks_json
        if snapshot.revoked_jtis != self._revoked_jtis:
            self._revoked_jtis = snapshot.revoked_jtis
            self.revoked.update(snapshot.revoked_jtis)
            self.verifier.clear_cache()
        self.checks.links.follow(snapshot.issuers)
        for name in snapshot.revoked_members:
            self.channels.drop(name)
        if snapshot.revoked_serials != self._revoked_serials:
            self._revoked_serials = snapshot.revoked_serials
            self._check_now.set()  # the certificates servers present, against the new data
        ended = self.active.sweep(self.trust.refusal)
        if ended:
            log.warning("%s: ended %d call(s) in flight refused by the new trust data", self.name, ended)
        if snapshot.bundle and snapshot.bundle != self.identity.files.bundle:  # a root rollover
            if self._chains_to(snapshot.bundle):
                install_bundle(self.identity.dir, snapshot.bundle)
                self.identity.reload()
                log.info("%s: trust bundle updated by the control plane", self.name)
            else:
                log.error("%s: refused a trust bundle that does not hold the root of its own certificate "
                          "(finish a root rollover only once every member has renewed)", self.name)
        self._refused = None
        self._first_update.set()

    def _chains_to(self, bundle: bytes) -> bool:
        """Whether this member's own certificate chains to a root of ``bundle``."""
        files = self.identity.files
        issuer = files.chain[0] if files.chain else files.leaf
        for root in x509.load_pem_x509_certificates(bundle):
            try:
                issuer.verify_directly_issued_by(root)
                return True
            except (ValueError, TypeError, InvalidSignature):
                continue
        return False

    def _receive(self, update: control_pb2.TrustUpdate) -> None:
        """Every message is verified (signature, CRL, bundle) against the roots this member trusts now;
        its age counts from the control plane's signature (heartbeats are re-signed)."""
        roots = x509.load_pem_x509_certificates(self.identity.files.bundle)
        now = self.clock()
        snapshot, _ = snapshot_of(update, roots, now)
        check_order(self.trust.snapshot, snapshot, now)
        self.trust.update(snapshot)

    async def _watch(self) -> None:
        """Follows ``WatchTrust``; reconnects with jittered backoff (at most a few seconds)."""
        attempt = 0
        reported = False
        while True:
            channel = self._control_for(self.identity.files)[0]
            call = control_pb2_grpc.IdentityServiceStub(channel).WatchTrust(control_pb2.WatchTrustRequest())
            switched = False
            try:
                async for update in call:
                    self._receive(update)
                    attempt, reported = 0, False
                    if channel is not self._control_for(self.identity.files)[0]:
                        switched = True  # renewed: follow on the new certificate's channel; the old one closes
                        break
            except grpc.aio.AioRpcError as e:
                if not self._first_update.is_set():  # start() says what is wrong
                    if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                        self._refused = e.details() or e.code().name  # e.g. a revoked member: no waiting
                        self._first_update.set()
                elif not reported:
                    reported = True
                    log.warning("%s: lost the control plane's trust stream (%s); reconnecting", self.name,
                                e.code().name)
            except PKIError as e:
                log.error("%s: refused trust data from the control plane: %s", self.name, e.message)
            finally:
                call.cancel()
            if switched:
                continue
            attempt += 1
            await asyncio.sleep(backoff(attempt, base=0.2, cap=3.0, rand=random.random()))  # noqa: S311 (jitter)

    async def _sign(self, csr: bytes) -> SignedIdentity:
        stub = control_pb2_grpc.IdentityServiceStub(self._control_for(self.identity.files)[0])
        try:
            res = await stub.Renew(control_pb2.CertificateSigningRequest(csr_pem=csr), timeout=10)
        except grpc.aio.AioRpcError as e:
            raise rpc_error(e, f"{self.name}: certificate renewal") from None
        return SignedIdentity(res.cert_chain_pem, res.bundle_pem)

    async def start(self, *, timeout: float | None = None) -> None:
        """Takes the trust data from the control plane (waiting up to ``timeout``, default
        ``control.connect_timeout``), then follows it."""
        timeout = self.config.control.connect_timeout if timeout is None else timeout
        self._tasks.append(asyncio.create_task(self._watch()))
        try:
            await asyncio.wait_for(self._first_update.wait(), timeout)
            if self._refused is not None:
                raise PKIError(f"{self.name}: the control plane refuses this member: {self._refused}")
        except TimeoutError:
            message = (f"{self.name}: no trust data from the control plane at {self.config.control.address} "
                       f"within {timeout:.0f} s")
            if self.config.revocation.failure_mode != "open":
                raise Unavailable(f"{message}; cannot check revocations (revocation.failure_mode="
                                  f"{self.config.revocation.failure_mode})") from None
            log.warning("%s; serving without revocation data (revocation.failure_mode=open)", message)
        for cache in self._jwks_caches:
            await asyncio.to_thread(cache.refresh_if_stale)
        await self._own_token()
        if self.renewer is not None:
            self._tasks.append(asyncio.create_task(self.renewer.run()))
        self._tasks.append(asyncio.create_task(self._check_servers_loop()))
        if self._jwks_caches:
            self._tasks.append(asyncio.create_task(refresh_forever(self._jwks_caches,
                                                                   self.config.tokens.revocation_refresh)))
        address = metrics_address(self.config, self.name)
        if address is not None and self.metrics_endpoint is None:
            self.metrics_endpoint = MetricsEndpoint(member_registry(self.sink.metrics, lambda: self.sink.stats),
                                                    address)
            log.info("%s: metrics on %s", self.name, self.metrics_endpoint.url)
        if self.metrics_push is None:
            self.metrics_push = otlp_metrics(self.config, self.sink.metrics, lambda: self.sink.stats)

    async def wait_for_trust(self, predicate: Callable[[TrustSnapshot], bool], *, timeout: float = 10.0) -> None:
        """Waits until the trust data satisfies ``predicate`` (e.g. after a revocation)."""
        deadline = time.monotonic() + timeout
        while not (self.trust.snapshot is not None and predicate(self.trust.snapshot)):
            if time.monotonic() > deadline:
                raise Unavailable(f"{self.name}: the trust data did not change within {timeout:.0f} s")
            await asyncio.sleep(0.01)

    async def _own_token(self) -> None:
        """Fetches (or refreshes, past 3/4 of its life) this member's token ahead of its calls."""
        try:
            await self.tokens.token()
        except MeshError as e:
            log.warning("%s: no token from the control plane yet: %s", self.name, e.message)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.channels.close()
        for channel, _ in self._controls.values():
            await channel.close()
        self._controls.clear()
        await self.limiter.aclose()
        if self._task_owners is not None:
            await self._task_owners.aclose()
        if self.metrics_endpoint is not None:
            await asyncio.to_thread(self.metrics_endpoint.close)
            self.metrics_endpoint = None
        if self.metrics_push is not None:
            await asyncio.to_thread(self.metrics_push.close)
            self.metrics_push = None
        self.sink.shutdown(timeout=5)
