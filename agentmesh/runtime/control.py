"""The control process: issues certificate-bound agent tokens, renews and joins members' certificates,
and streams the trust data (revocations, key set, bundle) to every member.

Agents authenticate with their mTLS certificate only (they have no token yet); a token's subject is
the certificate's SPIFFE ID, its roles come from the mesh config, and ``cnf.x5t#S256`` binds it to
that very certificate (RFC 8705), so a stolen token is useless from any other peer. ``Renew`` signs a
CSR for the caller's OWN SPIFFE ID only (a revoked caller never gets this far: its handshake passes
but the peer stage refuses it). ``Join`` is served on a separate, server-authenticated port
(``control.join_address``) and nothing else is: a one-time join token names the only member it may
join as. The control plane renews its own certificate through the CA it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from cryptography import x509
from google.protobuf import json_format

from agentmesh.a2a.cards import jwks_url, mesh_card, sign_card
from agentmesh.audit import AuditSink, build_audit
from agentmesh.audit import attributes as A
from agentmesh.audit.metrics import CERT_EXPIRY, HOUSEKEEPING_METHODS, REVOCATION_AGE
from agentmesh.audit.otlpmetrics import OtlpMetrics, otlp_metrics
from agentmesh.audit.prom import MetricsEndpoint, member_registry, metrics_address
from agentmesh.clock import Clock
from agentmesh.config import MeshConfig
from agentmesh.context import CallContext, current_call
from agentmesh.errors import ConfigError, DelegationError, PermissionDenied, TokenError
from agentmesh.identity import PeerIdentity
from agentmesh.interceptors.active import ActiveCalls
from agentmesh.interceptors.chain import audit_only_chain, identity_chain
from agentmesh.interceptors.identity import PeerIdentityCache
from agentmesh.pki import CertificateAuthority
from agentmesh.pki.csr import check_csr
from agentmesh.pki.join import JoinRefused, JoinTokens, parse_token
from agentmesh.runtime.credentials import AgentIdentity, member_identity
from agentmesh.runtime.publisher import TrustPublisher
from agentmesh.runtime.renewal import Renewer, SignedIdentity
from agentmesh.runtime.server import MeshServer
from agentmesh.runtime.truststate import TrustState
from agentmesh.tokens import JwksCache, KeySet, TokenAuthority, keys_from_config, verifier_from_config
from agentmesh.tokens.delegation import Checks, principal_of, split_links, verify_links
from agentmesh.tokens.jwks import refresh_forever
from agentmesh.tokens.links import LinkVerifier
from agentmesh.tokens.txn import TxnVerifier, grant, narrow, sign_txn_token
from agentmesh.trust import check_certificate
from agentmesh.v1 import control_pb2, control_pb2_grpc

__all__ = ["ControlPlane", "IdentityService", "JoinService", "TokenService", "start_control"]

log = logging.getLogger("agentmesh.control")


def member_roles(config: MeshConfig, name: str | None) -> tuple[str, ...]:
    """The roles of a mesh member; refuses a certificate holder that the config does not name."""
    if name is not None and name in config.agents:
        return config.agents[name].roles
    if name in (config.bridge.name, config.control.name):
        return ()
    raise PermissionDenied(f"{name or 'this peer'} is not a member of the mesh config")


def sign_csr(config: MeshConfig, ca: CertificateAuthority, name: str, csr: bytes, *,
             dns: Sequence[str] | None = None, renewing: int | None = None) -> control_pb2.IssuedIdentity:
    """A certificate for member ``name`` from its CSR (the CA checks the CSR names exactly that member),
    living ``control.cert_ttl``; its DNS names are ``dns`` or, on renewal, those of the certificate it renews
    (``renewing``: its serial, which must still be unrevoked in the CA's index)."""
    if dns is None:
        held = ca.entry(renewing) if renewing is not None else None
        latest = held or ca.latest(name)
        dns = latest.dns if latest is not None else ()
    issued = ca.issue_csr(name, csr, ttl=config.control.cert_ttl, dns=dns, renewing=renewing)
    if issued.capped:
        log.warning("control: %s's certificate is capped by the issuing CA's end (%s); run: agentmesh ca rotate",
                    name, ca.cert.not_valid_after_utc.isoformat(timespec="seconds"))
    return control_pb2.IssuedIdentity(cert_chain_pem=issued.cert_pem, bundle_pem=ca.bundle,
                                      not_after=int(issued.cert.not_valid_after_utc.timestamp()))


class TokenService(control_pb2_grpc.TokenServiceServicer):
    """Members' own tokens, the mesh's Transaction Token Service (:mod:`agentmesh.tokens.txn`), and signed A2A
    agent cards (:mod:`agentmesh.a2a.cards`)."""

    def __init__(self, config: MeshConfig, authority: TokenAuthority, *, clock: Clock = time.time,
                 checks: Checks | None = None, trust: TrustState | None = None) -> None:
        self.config = config
        self.authority = authority
        self.clock = clock
        self.checks = checks
        self.trust = trust

    async def IssueAgentToken(self, request: control_pb2.AgentTokenRequest,
                              context: grpc.aio.ServicerContext[Any, Any]) -> control_pb2.AgentToken:
        peer = current_call().peer
        assert peer is not None, "the control chain verifies the peer first"
        roles = member_roles(self.config, peer.name)
        ttl = self.config.tokens.ttl
        if request.ttl_seconds:
            ttl = min(ttl, float(request.ttl_seconds))
        ttl = min(ttl, max(1.0, peer.not_after - self.clock()))  # never outlive the bound certificate
        token = self.authority.issue(sub=peer.uri, roles=roles, audience=self.config.tokens.audience,
                                     ttl=ttl, cnf_thumbprint=peer.thumbprint)
        return control_pb2.AgentToken(token=token, expires_at=int(self.clock() + ttl))

    async def ExchangeTransactionToken(self, request: control_pb2.TransactionTokenRequest,
                                       context: grpc.aio.ServicerContext[Any, Any]) -> control_pb2.TransactionToken:
        call = current_call()
        peer = call.peer
        assert peer is not None and self.checks is not None, "the control chain verifies the peer first"
        member_roles(self.config, peer.name)
        now, cfg = self.clock(), self.config
        if bool(request.subject_token) == bool(request.txn_token):
            raise ConfigError("exchange exactly one of a subject token (at the edge) or a transaction token "
                              "(a replacement)")
        if request.subject_token:
            try:  # the principal's token: refusing it is the principal's to fix (PRINCIPAL_REFUSED), not the member's
                subject = self.checks.tokens.verify_unbound(request.subject_token)
            except TokenError as e:
                raise DelegationError("subject-token", f"subject token: {e.message}") from None
            granted = grant(subject, principal_of(subject, cfg.tokens.issuer), requester=peer.uri,
                            trust_domain=cfg.trust_domain, scope=request.scope, route=request.route,
                            rctx=dict(request.request_context), now=now, ttl=cfg.tokens.txn_ttl)
        else:  # a replacement: the requester proves the delegation it serves (addressed to it)
            links = split_links(request.links, self.checks.max_depth)
            snapshot = self.trust.snapshot if self.trust is not None else None
            current, chain, _ = verify_links(request.txn_token, links, checks=self.checks, snapshot=snapshot,
                                             peer=None, me=peer.uri, now=now)
            granted = narrow(current, chain, requester=peer.uri, trust_domain=cfg.trust_domain,
                             scope=request.scope, now=now, ttl=cfg.tokens.txn_ttl)
        a = self.authority
        token = sign_txn_token(a.key, a.algorithm, a.kid, a.issuer, granted.claims, iat=now, exp=granted.expires_at)
        txn = str(granted.claims["txn"])
        if call.span is not None:
            call.span.set_attributes({A.TXN: txn, A.ENDUSER_ID: str(granted.claims["sub"])})
        return control_pb2.TransactionToken(token=token, txn=txn, expires_at=int(granted.expires_at))

    async def SignAgentCard(self, request: control_pb2.AgentCardRequest,
                            context: grpc.aio.ServicerContext[Any, Any]) -> control_pb2.SignedAgentCard:
        """The card the mesh states for ``request.agent`` (:func:`agentmesh.a2a.cards.mesh_card`, from this
        config: nobody gets an arbitrary card signed), signed with the token key. The bridge serves the cards
        (an extended card only to authenticated callers), so only the bridge may ask."""
        call = current_call()
        peer = call.peer
        assert peer is not None, "the control chain verifies the peer first"
        if peer.name != self.config.bridge.name:
            raise PermissionDenied(f"{peer.name or 'this peer'} may not have agent cards signed "
                                   f"(only the bridge, {self.config.bridge.name}, may)")
        if call.span is not None:
            call.span.set_attributes({"agentmesh.a2a.card.agent": request.agent,
                                      "agentmesh.a2a.card.extended": request.extended})
        a = self.authority
        card = sign_card(mesh_card(self.config, request.agent, extended=request.extended), a.key,
                         algorithm=a.algorithm, kid=a.kid, jku=jwks_url(self.config))
        return control_pb2.SignedAgentCard(card_json=json_format.MessageToJson(card), kid=a.kid)


class IdentityService(control_pb2_grpc.IdentityServiceServicer):
    def __init__(self, config: MeshConfig, ca: CertificateAuthority, publisher: TrustPublisher) -> None:
        self.config = config
        self.ca = ca
        self.publisher = publisher

    async def Renew(self, request: control_pb2.CertificateSigningRequest,
                    context: grpc.aio.ServicerContext[Any, Any]) -> control_pb2.IssuedIdentity:
        call = current_call()
        peer = call.peer
        assert peer is not None and peer.name is not None, "the control chain verifies the peer first"
        member_roles(self.config, peer.name)
        issued = sign_csr(self.config, self.ca, peer.name, request.csr_pem, renewing=peer.serial)
        _record(call, peer.name, issued)
        return issued

    async def WatchTrust(self, request: control_pb2.WatchTrustRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[control_pb2.TrustUpdate]:
        async for update in self.publisher.watch():
            yield update


def _record(call: CallContext, member: str, issued: control_pb2.IssuedIdentity, **more: str) -> None:
    """Who got which certificate, on the call's audit span."""
    if call.span is not None:
        serial = x509.load_pem_x509_certificate(issued.cert_chain_pem).serial_number
        call.span.set_attributes({"agentmesh.cert.member": member, "agentmesh.cert.serial": format(serial, "x"),
                                  **more})


class JoinService(control_pb2_grpc.JoinServiceServicer):
    def __init__(self, config: MeshConfig, ca: CertificateAuthority, *, clock: Clock = time.time) -> None:
        self.config = config
        self.ca = ca
        self.tokens = JoinTokens(config.ca_dir, clock=clock)

    async def Join(self, request: control_pb2.JoinRequest,
                   context: grpc.aio.ServicerContext[Any, Any]) -> control_pb2.IssuedIdentity:
        call = current_call()
        try:
            parse_token(request.join_token)  # cheap, before any file is read
            blocked = self.ca.blocked()
            grant = self.tokens.check(request.join_token, blocked=blocked)
            if call.span is not None:
                call.span.set_attributes({"agentmesh.join.token_id": grant.id, "agentmesh.cert.member": grant.name})
            member_roles(self.config, grant.name)
            if grant.name == self.config.control.name:  # its certificate comes from the CA it holds, never a join
                raise PermissionDenied(f"{grant.name} is the control plane: it never joins")
            check_csr(request.csr_pem, self.config.spiffe_id(grant.name))  # refused requests leave the token
            self.tokens.redeem(request.join_token, blocked=blocked)  # spent: decided again under its lock
        except JoinRefused as e:
            if e.name is not None and call.span is not None:
                call.span.set_attribute("agentmesh.cert.member", e.name)
            raise PermissionDenied(e.message) from None
        issued = sign_csr(self.config, self.ca, grant.name, request.csr_pem, dns=grant.dns)
        _record(call, grant.name, issued)
        log.warning("control: %s joined the mesh with join token %s", grant.name, grant.id)
        return issued


class ControlPlane:
    """The running control plane: its mTLS server, its join server, and their background work."""

    def __init__(self, server: MeshServer, join: MeshServer | None, sink: AuditSink, publisher: TrustPublisher,
                 trust: TrustState, tasks: list[asyncio.Task[None]],
                 metrics_endpoint: MetricsEndpoint | None = None) -> None:
        self.server = server
        self.join = join
        self.sink = sink
        self.publisher = publisher
        self.trust = trust
        self._tasks = tasks
        self.metrics_endpoint = metrics_endpoint  # serving /metrics (the ``metrics`` section), or None
        self.metrics_push: OtlpMetrics | None = None  # pushing them over OTLP (metrics.otlp_endpoint), or None

    @property
    def port(self) -> int | None:
        return self.server.port

    async def stop(self, grace: float | None = None) -> None:
        self.publisher.close()  # trust streams end now, not at the end of the grace period
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.join is not None:
            await self.join.stop(0)
        await self.server.stop(grace)
        if self.metrics_endpoint is not None:
            await asyncio.to_thread(self.metrics_endpoint.close)
            self.metrics_endpoint = None
        if self.metrics_push is not None:
            await asyncio.to_thread(self.metrics_push.close)
            self.metrics_push = None

    async def serve_forever(self) -> None:
        """Runs until SIGTERM/SIGINT (draining calls in flight), then stops everything else."""
        try:
            await self.server.serve_forever()
        finally:
            await self.stop(0)


def _exchange_checks(config: MeshConfig, authority: TokenAuthority, trust: TrustState, identity: AgentIdentity,
                     clock: Clock) -> tuple[Checks, tuple[JwksCache, ...]]:
    """What the Transaction Token Service verifies with: subject tokens of the mesh and of every
    configured issuer (revoked jtis from the trust data), and the chains members present."""
    external, caches = keys_from_config(config.tokens, None, clock=clock)
    tokens = verifier_from_config(config.tokens, KeySet.merge(KeySet.from_authority(authority), external),
                                  revoked=trust.jti_revoked, clock=clock)

    def certificate(cert: x509.Certificate, presented: tuple[x509.Certificate, ...]) -> PeerIdentity:
        snapshot = trust.snapshot
        return check_certificate(cert, snapshot.issuers if snapshot else (), config.trust_domain, clock(),
                                 roots=identity.roots, presented=presented)

    txns = TxnVerifier(tokens, mesh_issuer=config.tokens.issuer, trust_domain=config.trust_domain)
    return Checks(tokens, txns, LinkVerifier(certificate), config.tokens.issuer, config.tokens.max_delegation_depth,
                  config.revocation, config.tokens.leeway), caches


async def start_control(config: MeshConfig, *, address: str | None = None,
                        clock: Clock = time.time) -> ControlPlane:
    """Starts the control plane (creating the token key beside the CA on first use)."""
    name = config.control.name
    authority = TokenAuthority.ensure(config.ca_dir, issuer=config.tokens.issuer)
    identity = member_identity(config, name)
    sink = build_audit(config.audit, service_name=name, housekeeping=HOUSEKEEPING_METHODS)
    sink.metrics.know(members=config.members(), issuers=[i.issuer for i in config.tokens.issuers])
    ca = CertificateAuthority.load(config.ca_dir, clock=clock)  # one, for good: it reads only what is new
    publisher = TrustPublisher(ca, jwks_json=json.dumps(authority.jwks()), issuer=authority.issuer,
                               heartbeat=config.tokens.revocation_refresh, clock=clock)
    trust = TrustState(config.revocation, clock=clock, owner=name)
    trust.update(publisher.snapshot)
    active = ActiveCalls()
    trust.on_update(lambda _snapshot: active.sweep(trust.refusal))
    peers = PeerIdentityCache(config.trust_domain, trust=trust, clock=clock)
    required = config.audit.required  # refuses what issues or changes something (chain.AUDIT_REQUIRED_EXEMPT)
    chain = identity_chain(name, sink=sink, audit_required=required, identities=peers, active=active)
    server = MeshServer(identity, interceptors=chain, max_connection_age=config.max_connection_age,
                        grace=config.grace_period)
    checks, jwks_caches = _exchange_checks(config, authority, trust, identity, clock)
    trust.on_update(lambda snapshot: checks.links.follow(snapshot.issuers))
    server.add(control_pb2_grpc.add_TokenServiceServicer_to_server,
               TokenService(config, authority, clock=clock, checks=checks, trust=trust), "agentmesh.v1.TokenService")
    server.add(control_pb2_grpc.add_IdentityServiceServicer_to_server,
               IdentityService(config, ca, publisher), "agentmesh.v1.IdentityService")
    await server.start(address or config.control.bind_address)
    join = None
    join_at = config.control.join_bind_address
    if join_at:
        join = MeshServer(identity, interceptors=audit_only_chain(name, sink=sink, audit_required=required),
                          grace=config.grace_period, client_auth=False)
        join.add(control_pb2_grpc.add_JoinServiceServicer_to_server, JoinService(config, ca, clock=clock),
                 "agentmesh.v1.JoinService")
        try:
            await join.start(join_at)
        except BaseException:
            await server.stop(0)
            raise

    async def sign_locally(csr: bytes) -> SignedIdentity:
        issued = sign_csr(config, ca, name, csr, renewing=identity.files.leaf.serial_number)
        return SignedIdentity(issued.cert_chain_pem, issued.bundle_pem)

    renewer = Renewer(identity, sign_locally, owner=name, clock=clock)
    for cache in jwks_caches:
        await asyncio.to_thread(cache.refresh_if_stale)
    tasks = [asyncio.create_task(publisher.run(trust.update)), asyncio.create_task(renewer.run())]
    if jwks_caches:
        tasks.append(asyncio.create_task(refresh_forever(jwks_caches, config.tokens.revocation_refresh)))
    sink.metrics.watch(CERT_EXPIRY, lambda: identity.files.leaf.not_valid_after_utc.timestamp() - clock())
    sink.metrics.watch(REVOCATION_AGE, lambda: clock() - trust.snapshot.received_at if trust.snapshot else None)
    plane = ControlPlane(server, join, sink, publisher, trust, tasks)
    metrics_at = metrics_address(config, name)
    try:
        if metrics_at is not None:
            plane.metrics_endpoint = MetricsEndpoint(member_registry(sink.metrics, lambda: sink.stats), metrics_at)
            log.info("control: metrics on %s", plane.metrics_endpoint.url)
        plane.metrics_push = otlp_metrics(config, sink.metrics, lambda: sink.stats)
    except BaseException:
        await plane.stop(0)
        raise
    return plane
