"""A member's live trust data: the newest verified :class:`agentmesh.trust.TrustSnapshot` and what
follows from it (revoked token ids for the verifier, calls to end, channels to drop).

The decisions themselves are the pure functions of :mod:`agentmesh.trust`; this holder only swaps an
immutable snapshot (safe to read from gRPC's threads), logs a stale-data warning once per episode,
and tells listeners when the data changed or was confirmed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agentmesh.clock import Clock
from agentmesh.context import CallContext
from agentmesh.errors import DelegationError, MeshError, TokenError
from agentmesh.identity import PeerIdentity, SpiffeId
from agentmesh.trust import RevocationPolicy, TrustSnapshot, check_member, check_peer

__all__ = ["TrustState"]

log = logging.getLogger("agentmesh.trust")
Listener = Callable[[TrustSnapshot], object]


class TrustState:
    def __init__(self, policy: RevocationPolicy, *, clock: Clock = time.time, owner: str = "") -> None:
        self.policy = policy
        self.clock = clock
        self.owner = owner
        self.snapshot: TrustSnapshot | None = None
        self._listeners: list[Listener] = []
        self._warned = False
        self._lock = threading.Lock()

    def on_update(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def update(self, snapshot: TrustSnapshot) -> None:
        """A new or re-confirmed snapshot (from the control plane's stream, or the CA itself)."""
        with self._lock:
            self.snapshot = snapshot
            self._warned = False
        for listener in self._listeners:
            listener(snapshot)

    # ------------------------------------------------------------------ decisions (per call: cheap)
    def check_peer(self, peer: PeerIdentity, *, known: bool) -> None:
        s, now = self.snapshot, self.clock()
        if s is not None and peer.serial not in s.revoked_serials and peer.name not in s.revoked_members \
                and now <= s.crl_next_update and now - s.received_at <= self.policy.max_staleness:
            return  # the common case, on every call: fresh data, nothing revoked (what check_peer returns too)
        warning = check_peer(s, serial=peer.serial, name=peer.name, spiffe_id=peer.uri, known=known, now=now,
                             policy=self.policy)
        if warning is not None and not self._warned:
            self._warned = True
            log.warning("%s: %s; accepting peers under revocation.failure_mode=%s", self.owner, warning,
                        self.policy.failure_mode)

    def member_revoked(self, name: str | None) -> bool:
        s = self.snapshot
        return s is not None and name is not None and name in s.revoked_members

    def jti_revoked(self, jti: str) -> bool:
        s = self.snapshot
        return s is not None and jti in s.revoked_jtis

    def refusal(self, call: CallContext) -> MeshError | None:
        """Why a call in flight must end now (its peer, a token, a member of its delegation chain or the
        transaction's subject token was revoked); None if not.
        Calls already running are "known" peers: stale data alone ends them only in strict mode."""
        peer = call.peer
        if peer is None:
            return None
        try:
            check_peer(self.snapshot, serial=peer.serial, name=peer.name, spiffe_id=peer.uri, known=True,
                       now=self.clock(), policy=self.policy)
            for member in call.chain[:-1]:  # verified SPIFFE IDs of this mesh (the token stage checked them)
                check_member(self.snapshot, SpiffeId.parse(member).agent_name)
            for hop in call.hops:  # the certificates that signed its links
                if self.snapshot is not None and hop.serial in self.snapshot.revoked_serials:
                    raise DelegationError("link-revoked", f"the certificate of hop {hop.signer} was revoked")
        except MeshError as e:
            return e
        if call.peer_token is not None and self.jti_revoked(call.peer_token.jti):
            return TokenError("the caller's own token was revoked during the call")
        if call.txn is not None and self.jti_revoked(call.txn.subject_jti):
            return DelegationError("txn-revoked", "the transaction's subject token was revoked during the call")
        return None
