"""Peer identity stage: the caller is who its verified client certificate says, and nothing else."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from agentmesh.context import CallContext
from agentmesh.errors import PeerIdentityError
from agentmesh.identity import PeerIdentity, peer_identity_from_pem
from agentmesh.interceptors.stage import Stage
from agentmesh.runtime.truststate import TrustState
from agentmesh.trust import check_mtls_peer

__all__ = ["PeerIdentityCache", "PeerIdentityStage"]


class PeerIdentityCache:
    """Parses each distinct peer certificate once (bounded LRU); validity and revocation are checked
    on every call. A peer is cached only once it passed, so "known" peers are those accepted before
    (what ``revocation.failure_mode: closed`` keeps serving while the revocation data is stale)."""

    def __init__(self, trust_domain: str, *, trust: TrustState | None = None, size: int = 4096,
                 clock: Callable[[], float] = time.time) -> None:
        self.trust_domain = trust_domain
        self.trust = trust
        self.size = size
        self.clock = clock
        self._cache: OrderedDict[bytes, PeerIdentity] = OrderedDict()

    def identify(self, pem: bytes | None, chain: Sequence[bytes] = ()) -> PeerIdentity:
        if not pem:
            raise PeerIdentityError("no verified client certificate (mutual TLS is required)")
        now = self.clock()
        peer = self._cache.get(pem)
        if peer is None:
            snapshot = self.trust.snapshot if self.trust is not None else None
            peer = check_mtls_peer(pem, chain, snapshot, self.trust_domain, now) if snapshot is not None \
                else peer_identity_from_pem(pem, self.trust_domain, now)
            if self.trust is not None:
                self.trust.check_peer(peer, known=False)
            self._cache[pem] = peer
            if len(self._cache) > self.size:
                self._cache.popitem(last=False)
            return peer
        self._cache.move_to_end(pem)
        if now > peer.not_after:
            raise PeerIdentityError("peer certificate has expired")
        if self.trust is not None:
            self.trust.check_peer(peer, known=True)
        return peer

    def touch(self, pem: bytes | None) -> None:
        """Marks a peer as just seen (a call decided without :meth:`identify`), so it stays known."""
        if pem is not None and pem in self._cache:
            self._cache.move_to_end(pem)


def peer_pem(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[bytes | None, Sequence[bytes]]:
    """The client leaf certificate TLS verified and the chain it presented, from the auth context (never
    from metadata)."""
    auth = context.auth_context()
    return next(iter(auth.get("x509_pem_cert", ())), None), tuple(auth.get("x509_pem_cert_chain", ()))



class PeerIdentityStage(Stage):
    guards_exempt = True  # health checks too: a revoked or foreign certificate gets nothing

    def __init__(self, cache: PeerIdentityCache) -> None:
        super().__init__()
        self.cache = cache

    async def before(self, call: CallContext, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        call.peer = self.cache.identify(*peer_pem(context))
