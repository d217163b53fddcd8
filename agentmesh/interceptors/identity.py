"""Peer identity stage: the caller is who its verified client certificate says, and nothing else."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import grpc

from agentmesh.config import MeshConfig
from agentmesh.context import CallContext
from agentmesh.errors import PeerIdentityError
from agentmesh.identity import PeerIdentity, peer_identity_from_pem
from agentmesh.interceptors.base import Stage
from agentmesh.pki.crl import RevocationList
from agentmesh.runtime.credentials import AgentIdentity

__all__ = ["PeerIdentityCache", "PeerIdentityStage"]


class PeerIdentityCache:
    """Parses each distinct peer certificate once (bounded LRU); validity and CRL are checked every call."""

    def __init__(self, trust_domain: str, *, revocations: RevocationList | None = None, size: int = 4096,
                 clock: Callable[[], float] = time.time) -> None:
        self.trust_domain = trust_domain
        self.revocations = revocations
        self.size = size
        self.clock = clock
        self._cache: OrderedDict[bytes, PeerIdentity] = OrderedDict()

    def identify(self, pem: bytes | None) -> PeerIdentity:
        if not pem:
            raise PeerIdentityError("no verified client certificate (mutual TLS is required)")
        now = self.clock()
        peer = self._cache.get(pem)
        if peer is None:
            peer = peer_identity_from_pem(pem, self.trust_domain, now)
            self._cache[pem] = peer
            if len(self._cache) > self.size:
                self._cache.popitem(last=False)
        elif now > peer.not_after:
            raise PeerIdentityError("peer certificate has expired")
        if self.revocations is not None and self.revocations.is_revoked(peer.serial):
            raise PeerIdentityError(f"peer certificate of {peer.spiffe_id} is revoked")
        return peer


def peer_pem(context: grpc.aio.ServicerContext) -> bytes | None:
    """The client leaf certificate TLS verified, from the auth context (never from metadata)."""
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert")
    return pems[0] if pems else None



class PeerIdentityStage(Stage):
    guards_exempt = True  # health checks too: a revoked or foreign certificate gets nothing

    def __init__(self, cache: PeerIdentityCache) -> None:
        super().__init__()
        self.cache = cache

    async def before(self, call: CallContext, context: grpc.aio.ServicerContext) -> None:
        call.peer = self.cache.identify(peer_pem(context))


def peer_checks(config: MeshConfig, identity: AgentIdentity, *, check_every: float = 1.0,
                clock: Callable[[], float] = time.time) -> PeerIdentityCache:
    """The peer checks of a member: this trust domain, and the CRL signed by the member's own
    issuing CA (the file may appear later, at the first revocation: it is re-checked, never an error)."""
    chain = identity.files.chain
    revocations = RevocationList(config.crl_path, chain[0] if chain else None, check_every=check_every)
    return PeerIdentityCache(config.trust_domain, revocations=revocations, clock=clock)
