"""When a call may reuse the decision made for an earlier call with the very same credentials.

The server chain decides who is calling and whether it may call (peer certificate, its own token, the
transaction token and hop links of a delegated call, the policy) from values that repeat call after
call on one connection: the same certificate, the same token, the same method. Deciding it again each
time costs more than the rest of the chain; the decision cannot change unless one of its inputs does.
:class:`Admitted` is such a decision, and :func:`still_admitted` says whether it still holds, from
plain values and the current time:

* every input is part of the cache key (the certificate as TLS verified it, the tokens, the method, the
  A2A skill asked for), so an entry is only ever found for the same credentials;
* the trust data is still what it was decided under: the same revoked serials, token ids and members,
  the same issuing CAs, trust bundle and token key set (:func:`same_trust_data`; a heartbeat that only
  re-confirms the data keeps it; a revocation, a kill switch, a key or CA rotation changes the
  ``epoch`` and every entry made before is refused);
* that trust data is still fresh (``revocation.max_staleness``, the CRL's next update): past that the
  full decision runs again, with what ``revocation.failure_mode`` says about stale data;
* the token verifier's key set is the one it was decided under (a JWKS refresh replaces it);
* nothing it relied on has expired: the peer certificate, its token, the transaction token, every hop
  link and its certificate (:func:`valid_until`: the earliest of those times), and the clock has not
  gone back to before the decision (a token or link "not yet valid" then is decided again);
* its token ids are not revoked now (``revoked``: the member's revoked-token set, checked on every hit).

A refusal is never cached: a refused call runs the full decision every time. A change of policy means a
new policy engine, whose stage starts with an empty cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agentmesh.identity import PeerIdentity
from agentmesh.tokens.delegation import Caller
from agentmesh.tokens.keys import KeySet
from agentmesh.trust import TrustSnapshot

__all__ = ["Admitted", "fresh", "same_trust_data", "still_admitted", "valid_until"]


@dataclass(frozen=True, slots=True)
class Admitted:
    """A call that was admitted: who called (``peer``, ``caller``), the rule that allowed it, and what
    the decision was made under (``epoch`` of the trust data, ``keys``), when (``at``) and until when it
    can hold by time alone (``until``)."""

    peer: PeerIdentity
    caller: Caller
    rule: str | None
    epoch: int
    keys: KeySet
    at: float
    until: float


def valid_until(peer: PeerIdentity, caller: Caller) -> float:
    """The first moment a decision about ``caller`` from ``peer`` may no longer hold by time alone."""
    until = min(peer.not_after, caller.own.exp)
    if caller.txn is not None:
        until = min(until, caller.txn.exp)
    for link in caller.links:
        until = min(until, link.exp, link.cert_not_after)
    return until


def same_trust_data(a: TrustSnapshot | None, b: TrustSnapshot | None) -> bool:
    """Whether two snapshots say the same about who is trusted (what a heartbeat re-confirms)."""
    if a is b:
        return True
    if a is None or b is None:
        return False
    return (a.revoked_serials == b.revoked_serials and a.revoked_jtis == b.revoked_jtis
            and a.revoked_members == b.revoked_members and a.issuers == b.issuers and a.bundle == b.bundle
            and a.jwks_json == b.jwks_json and a.issuer == b.issuer)


def fresh(trust: TrustSnapshot | None, now: float, max_staleness: float) -> bool:
    """Whether ``trust`` may be relied on without asking the failure mode (no data: nothing to be stale)."""
    return trust is None or (now <= trust.crl_next_update and now - trust.received_at <= max_staleness)


def still_admitted(entry: Admitted, *, now: float, epoch: int, trust_fresh: bool, keys: KeySet,
                   revoked: Callable[[str], bool]) -> bool:
    """Whether ``entry`` decides a call with the same credentials now (see the module docstring): the trust
    data of ``epoch`` (``trust_fresh``: see :func:`fresh`) and ``keys`` are the member's now. False means:
    decide it in full."""
    if not trust_fresh or epoch != entry.epoch or keys is not entry.keys or not entry.at <= now < entry.until:
        return False
    caller = entry.caller
    if revoked(caller.own.jti):
        return False
    return caller.txn is None or not revoked(caller.txn.subject_jti)
