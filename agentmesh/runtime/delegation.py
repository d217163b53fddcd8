"""A member's side of verifiable delegation (the decision itself is :mod:`agentmesh.tokens.delegation`):
the checks its server chain runs on delegated calls, the signer of its own hop links, and its requests to
the control plane's Transaction Token Service (``exchange`` at the edge, ``narrow`` inside a delegated call).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agentmesh.audit import inject
from agentmesh.clock import Clock
from agentmesh.config import MeshConfig
from agentmesh.context import maybe_current_call
from agentmesh.errors import ConfigError, MeshError, PermissionDenied, PKIError, TokenError, Unavailable
from agentmesh.identity import PeerIdentity
from agentmesh.interceptors.status import REASON_PRINCIPAL, refusal_reason
from agentmesh.runtime.credentials import AgentIdentity, IdentityFiles
from agentmesh.runtime.truststate import TrustState
from agentmesh.tokens import TokenVerifier
from agentmesh.tokens.delegation import Checks
from agentmesh.tokens.links import HopSigner, LinkVerifier
from agentmesh.tokens.txn import TxnVerifier
from agentmesh.trust import check_certificate
from agentmesh.v1 import control_pb2, control_pb2_grpc

__all__ = ["MemberDelegation", "rpc_error"]


def rpc_error(e: grpc.aio.AioRpcError, what: str) -> MeshError:
    """A control-plane RPC failure as one line of the error tree (refusals keep their meaning)."""
    details = e.details() or e.code().name
    if e.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
        return PKIError(f"{what} refused by the control plane: {details}")
    return Unavailable(f"{what}: control plane unavailable ({e.code().name})")


class MemberDelegation:
    def __init__(self, config: MeshConfig, name: str, identity: AgentIdentity, trust: TrustState,
                 verifier: TokenVerifier, *, control: Callable[[], grpc.aio.Channel], clock: Clock = time.time) -> None:
        self.config = config
        self.name = name
        self.spiffe_id = str(config.spiffe_id(name))
        self.identity = identity
        self.trust = trust
        self.control = control  # the mTLS channel to the control plane of this member's current certificate
        self.clock = clock
        txns = TxnVerifier(verifier, mesh_issuer=config.tokens.issuer, trust_domain=config.trust_domain)
        self.checks = Checks(verifier, txns, LinkVerifier(self._link_certificate), config.tokens.issuer,
                             config.tokens.max_delegation_depth, config.revocation, config.tokens.leeway)
        self._hops: tuple[str, HopSigner] | None = None  # the signer of this member's links, per certificate

    def hop_signer(self, files: IdentityFiles) -> HopSigner:
        """Signs hop links with the certificate (and key) the channel of ``files`` presents."""
        if self._hops is None or self._hops[0] != files.thumbprint:
            key = serialization.load_pem_private_key(files.key, password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey)
            self._hops = (files.thumbprint, HopSigner(key, files.leaf, self.spiffe_id,
                                                      ttl=self.config.tokens.link_ttl, clock=self.clock,
                                                      issuer=files.chain[0] if files.chain else None))
        return self._hops[1]

    def _link_certificate(self, cert: x509.Certificate, presented: tuple[x509.Certificate, ...]) -> PeerIdentity:
        """A hop link's signer: issued by an issuing CA the trust data vouches for, or one it presented
        that a root of this member's bundle signed."""
        snapshot = self.trust.snapshot
        return check_certificate(cert, snapshot.issuers if snapshot is not None else (), self.config.trust_domain,
                                 self.clock(), roots=self.identity.roots, presented=presented)

    # ------------------------------------------------------------------ the Transaction Token Service
    async def exchange(self, subject_token: str, *, scope: str = "", route: str = "",
                       request_context: dict[str, str] | None = None) -> control_pb2.TransactionToken:
        """A transaction token for an external principal's token (at the edge: the bridge, a CLI); the
        external token goes to the control plane and no further. Use it with :func:`delegating`."""
        return await self._request(control_pb2.TransactionTokenRequest(
            subject_token=subject_token, scope=scope, route=route, request_context=request_context or {}))

    async def narrow(self, scope: str) -> control_pb2.TransactionToken:
        """Inside a delegated call this member serves: a replacement transaction token with a narrower
        ``scope`` (same transaction and principal); calls made with it start their chain at this member."""
        call = maybe_current_call()
        if call is None or call.txn_token is None:
            raise TokenError("narrow() needs a delegated call being served (no transaction token here)")
        return await self._request(control_pb2.TransactionTokenRequest(
            txn_token=call.txn_token, links=",".join(call.links), scope=scope))

    async def _request(self, request: control_pb2.TransactionTokenRequest) -> control_pb2.TransactionToken:
        stub = control_pb2_grpc.TokenServiceStub(self.control())
        metadata: list[tuple[str, str]] = []
        inject(metadata)  # the exchange belongs to the trace of the request it is made for
        try:
            reply: control_pb2.TransactionToken = await stub.ExchangeTransactionToken(
                request, timeout=self.config.control.connect_timeout, metadata=metadata)
            return reply
        except grpc.aio.AioRpcError as e:
            details = e.details() or e.code().name
            if refusal_reason(e) == REASON_PRINCIPAL:  # the principal's token: the principal's to fix
                raise TokenError(details) from None
            if e.code() == grpc.StatusCode.PERMISSION_DENIED:  # e.g. a wider scope than held
                raise PermissionDenied(f"the control plane refused a transaction token: {details}") from None
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise ConfigError(f"the control plane refused a transaction token: {details}") from None
            raise rpc_error(e, f"{self.name}: transaction token") from None  # this member refused, or no control
