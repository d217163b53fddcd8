"""The table of :func:`agentmesh.admission.still_admitted`: when an earlier admission decides a call with
the same credentials, and every change that must make the full decision run again."""

from __future__ import annotations

import dataclasses

import pytest

from agentmesh.admission import Admitted, still_admitted, valid_until
from agentmesh.identity import PeerIdentity, SpiffeId
from agentmesh.tokens.delegation import Caller
from agentmesh.tokens.keys import KeySet
from agentmesh.tokens.links import Link
from agentmesh.trust import TrustSnapshot

NOW = 1_700_000_000.0
STALE = 120.0
PEER = PeerIdentity(SpiffeId.parse("spiffe://example.org/agent/a"), 7, "thumb", NOW + 3600)
KEYS = KeySet()
TRUST = TrustSnapshot(frozenset({1}), frozenset({"old-jti"}), frozenset({"gone"}), NOW + 600, NOW - 10)


@dataclasses.dataclass(frozen=True)
class Own:
    jti: str = "own-jti"
    exp: float = NOW + 300


@dataclasses.dataclass(frozen=True)
class Txn:
    subject_jti: str = "client-jti"
    exp: float = NOW + 200


def link(exp: float = NOW + 60, cert_not_after: float = NOW + 3600) -> Link:
    return Link(signer="spiffe://example.org/agent/b", name="b", serial=9, thumbprint="t",
                cert_not_after=cert_not_after,
                aud="", tth="", ph=None, iat=NOW, exp=exp, hash="h")


CALLER = Caller("spiffe://example.org/agent/a", ("r",), Own())  # type: ignore[arg-type]
DELEGATED = Caller("alice", ("client",), Own(), Txn(), ("spiffe://example.org/agent/b",), (link(),))  # type: ignore[arg-type]


def entry(caller: Caller = CALLER, trust: TrustSnapshot | None = TRUST) -> Admitted:
    return Admitted(PEER, caller, "rule", trust, KEYS, valid_until(PEER, caller))


def check(e: Admitted, *, now: float = NOW, trust: TrustSnapshot | None = TRUST, keys: KeySet = KEYS,
          revoked: frozenset[str] = frozenset()) -> bool:
    return still_admitted(e, now=now, trust=trust, keys=keys, max_staleness=STALE, revoked=revoked.__contains__)


@pytest.mark.parametrize(("case", "holds"), [
    (lambda: check(entry()), True),
    (lambda: check(entry(), trust=TRUST.confirmed(NOW)), True),  # a heartbeat: the same data, confirmed
    (lambda: check(entry(), trust=dataclasses.replace(TRUST, revoked_serials=frozenset({1, 7}))), False),
    (lambda: check(entry(), trust=dataclasses.replace(TRUST, revoked_serials=frozenset({1}))), False),  # equal, new
    (lambda: check(entry(), trust=dataclasses.replace(TRUST, revoked_jtis=frozenset({"x"}))), False),
    (lambda: check(entry(), trust=dataclasses.replace(TRUST, revoked_members=frozenset({"a"}))), False),
    (lambda: check(entry(), trust=dataclasses.replace(TRUST, issuers=(object(),))), False),  # type: ignore[arg-type]
    (lambda: check(entry(), trust=dataclasses.replace(TRUST, bundle=b"new roots")), False),
    (lambda: check(entry(), trust=dataclasses.replace(TRUST, jwks_json='{"keys":[]}')), False),
    (lambda: check(entry(), trust=None), False),
    (lambda: check(entry(trust=None), trust=None), True),  # a member without trust data: keys and times only
    (lambda: check(entry(trust=None)), False),
    (lambda: check(entry(), keys=KeySet()), False),  # the verifier's key set replaced
    (lambda: check(entry(), now=TRUST.received_at + STALE), True),
    (lambda: check(entry(), now=TRUST.received_at + STALE + 0.001), False),  # stale: the failure mode decides
    (lambda: check(entry(), now=TRUST.crl_next_update + 0.001), False),  # the CRL is past its next update
    (lambda: check(entry(), revoked=frozenset({"own-jti"})), False),
    (lambda: check(entry(), revoked=frozenset({"client-jti"})), True),  # not this caller's transaction
    (lambda: check(entry(DELEGATED), revoked=frozenset({"client-jti"})), False),
    (lambda: check(entry(), now=NOW + 299.999, trust=TRUST.confirmed(NOW + 250)), True),
    (lambda: check(entry(), now=NOW + 300, trust=TRUST.confirmed(NOW + 250)), False),  # its own token expired
    (lambda: check(entry(DELEGATED), now=NOW + 59), True),
    (lambda: check(entry(DELEGATED), now=NOW + 60), False),  # a link expired
], ids=["same", "heartbeat", "serial revoked", "serials rebuilt", "jti revoked", "kill switch", "issuers",
        "bundle", "jwks", "trust lost", "no trust data", "trust data arrived", "keys replaced", "fresh to the end",
        "stale", "crl next update", "own jti revoked", "another jti", "subject token revoked", "before expiry",
        "token expired", "link in time", "link expired"])
def test_still_admitted(case: object, holds: bool) -> None:
    assert case() is holds  # type: ignore[operator]


@pytest.mark.parametrize(("caller", "peer_not_after", "until"), [
    (CALLER, NOW + 3600, NOW + 300),  # the token first
    (CALLER, NOW + 100, NOW + 100),  # the certificate first
    (DELEGATED, NOW + 3600, NOW + 60),  # a link
    (dataclasses.replace(DELEGATED, links=(link(exp=NOW + 900, cert_not_after=NOW + 30),)), NOW + 3600, NOW + 30),
    (dataclasses.replace(DELEGATED, links=()), NOW + 3600, NOW + 200),  # the transaction token
])
def test_valid_until_is_the_first_expiry(caller: Caller, peer_not_after: float, until: float) -> None:
    assert valid_until(dataclasses.replace(PEER, not_after=peer_not_after), caller) == until
