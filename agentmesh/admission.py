"""When a call may reuse the decision made for an earlier call with the very same credentials.

The server chain decides who is calling and whether it may call (peer certificate, its own token, the
transaction token and hop links of a delegated call, the policy) from values that repeat call after
call on one connection: the same certificate, the same token, the same method. Deciding it again each
time costs more than the rest of the chain; the decision cannot change unless one of its inputs does.
:class:`Admitted` is such a decision, and :func:`still_admitted` says whether it still holds, from
plain values and the current time:

* every input is part of the cache key (the certificate as TLS verified it, the raw token headers, the
  method, the A2A skill asked for), so an entry is only ever found for the same credentials;
* the trust data it was decided under is still the trust data: the same revoked serials, token ids and
  members, the same issuing CAs, trust bundle and token key set (a heartbeat that only re-confirms the
  data keeps them; a revocation, a kill switch, a key or CA rotation replaces them, and every entry made
  before is refused);
* that trust data is still fresh (``revocation.max_staleness``, the CRL's next update): past that the
  full decision runs again, with what ``revocation.failure_mode`` says about stale data;
* the token verifier's key set is the one it was decided under (a JWKS refresh replaces it);
* nothing it relied on has expired: the peer certificate, its token, the transaction token, every hop
  link and its certificate (:func:`valid_until`: the earliest of those times);
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

__all__ = ["Admitted", "still_admitted", "valid_until"]


@dataclass(frozen=True, slots=True)
class Admitted:
    """A call that was admitted: who called (``peer``, ``caller``), the rule that allowed it, and what
    the decision was made under (``trust``, ``keys``) and until when it can hold (``until``)."""

    peer: PeerIdentity
    caller: Caller
    rule: str | None
    trust: TrustSnapshot | None
    keys: KeySet
    until: float


def valid_until(peer: PeerIdentity, caller: Caller) -> float:
    """The first moment a decision about ``caller`` from ``peer`` may no longer hold by time alone."""
    until = min(peer.not_after, caller.own.exp)
    if caller.txn is not None:
        until = min(until, caller.txn.exp)
    for link in caller.links:
        until = min(until, link.exp, link.cert_not_after)
    return until


def _same_trust(now: float, was: TrustSnapshot | None, now_trust: TrustSnapshot | None, max_staleness: float) -> bool:
    if now_trust is None or was is None:
        return now_trust is was
    if now_trust is not was and not (
        now_trust.revoked_serials is was.revoked_serials
        and now_trust.revoked_jtis is was.revoked_jtis
        and now_trust.revoked_members is was.revoked_members
        and now_trust.issuers is was.issuers
        and now_trust.bundle is was.bundle
        and now_trust.jwks_json is was.jwks_json
    ):
        return False
    return now <= now_trust.crl_next_update and now - now_trust.received_at <= max_staleness


def still_admitted(entry: Admitted, *, now: float, trust: TrustSnapshot | None, keys: KeySet, max_staleness: float,
                   revoked: Callable[[str], bool]) -> bool:
    """Whether ``entry`` decides a call with the same credentials now (see the module docstring);
    False means: decide it in full."""
    if now >= entry.until or keys is not entry.keys:
        return False
    if not _same_trust(now, entry.trust, trust, max_staleness):
        return False
    caller = entry.caller
    if revoked(caller.own.jti):
        return False
    return caller.txn is None or not revoked(caller.txn.subject_jti)
