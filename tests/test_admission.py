"""The tables of :mod:`agentmesh.admission`: when an earlier admission decides a call with the same
credentials, and every change that must make the full decision run again."""

from __future__ import annotations

import dataclasses

import pytest

from agentmesh.admission import Admitted, fresh, same_trust_data, still_admitted, valid_until
from agentmesh.identity import PeerIdentity, SpiffeId
from agentmesh.tokens.delegation import Caller
from agentmesh.tokens.keys import KeySet
from agentmesh.tokens.links import Link
from agentmesh.trust import TrustSnapshot

NOW = 1_700_000_000.0
STALE = 120.0
PEER = PeerIdentity(SpiffeId.parse("spiffe://example.org/agent/a"), 7, "thumb", NOW + 3600)
KEYS = KeySet()
TRUST = TrustSnapshot(frozenset({1}), frozenset({"old-jti"}), frozenset({"gone"}), NOW + 600, NOW - 10,
                      jwks_json='{"keys":[1]}', bundle=b"roots")


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
                cert_not_after=cert_not_after, aud="", tth="", ph=None, iat=NOW, exp=exp, hash="h")


CALLER = Caller("spiffe://example.org/agent/a", ("r",), Own())  # type: ignore[arg-type]
DELEGATED = Caller("alice", ("client",), Own(), Txn(), ("spiffe://example.org/agent/b",), (link(),))  # type: ignore[arg-type]


def entry(caller: Caller = CALLER, epoch: int = 3, at: float = NOW - 1) -> Admitted:
    return Admitted(PEER, caller, "rule", epoch, KEYS, at, valid_until(PEER, caller))


def check(e: Admitted, *, now: float = NOW, epoch: int = 3, trust_fresh: bool = True, keys: KeySet = KEYS,
          revoked: frozenset[str] = frozenset()) -> bool:
    return still_admitted(e, now=now, epoch=epoch, trust_fresh=trust_fresh, keys=keys, revoked=revoked.__contains__)


@pytest.mark.parametrize(("case", "holds"), [
    (lambda: check(entry()), True),
    (lambda: check(entry(), epoch=4), False),  # the trust data changed since
    (lambda: check(entry(), trust_fresh=False), False),  # stale: the failure mode decides
    (lambda: check(entry(), keys=KeySet()), False),  # the verifier's key set replaced
    (lambda: check(entry(), revoked=frozenset({"own-jti"})), False),
    (lambda: check(entry(), revoked=frozenset({"client-jti"})), True),  # not this caller's transaction
    (lambda: check(entry(DELEGATED), revoked=frozenset({"client-jti"})), False),
    (lambda: check(entry(), now=NOW + 299.999), True),
    (lambda: check(entry(), now=NOW + 300), False),  # its own token expired
    (lambda: check(entry(DELEGATED), now=NOW + 59), True),
    (lambda: check(entry(DELEGATED), now=NOW + 60), False),  # a link expired
    (lambda: check(entry(at=NOW + 5)), False),  # the clock went back to before the decision
    (lambda: check(entry(at=NOW)), True),
], ids=["same", "new epoch", "stale", "keys replaced", "own jti revoked", "another jti", "subject token revoked",
        "before expiry", "token expired", "link in time", "link expired", "clock went back", "decided now"])
def test_still_admitted(case: object, holds: bool) -> None:
    assert case() is holds  # type: ignore[operator]


@pytest.mark.parametrize(("other", "same"), [
    (TRUST, True),
    (TRUST.confirmed(NOW), True),  # a heartbeat
    (dataclasses.replace(TRUST, revoked_serials=frozenset({1}), received_at=NOW), True),  # rebuilt, equal
    (dataclasses.replace(TRUST, generation=9, signed_at=NOW), True),  # re-signed, same content
    (dataclasses.replace(TRUST, revoked_serials=frozenset({1, 7})), False),
    (dataclasses.replace(TRUST, revoked_jtis=frozenset({"x"})), False),
    (dataclasses.replace(TRUST, revoked_members=frozenset({"a"})), False),  # the kill switch
    (dataclasses.replace(TRUST, issuers=(object(),)), False),  # type: ignore[arg-type]
    (dataclasses.replace(TRUST, bundle=b"new roots"), False),
    (dataclasses.replace(TRUST, jwks_json='{"keys":[2]}'), False),
    (dataclasses.replace(TRUST, issuer="https://other"), False),
    (None, False),
], ids=["itself", "heartbeat", "rebuilt", "re-signed", "serial", "jti", "member", "issuers", "bundle", "jwks",
        "issuer", "none"])
def test_same_trust_data(other: TrustSnapshot | None, same: bool) -> None:
    assert same_trust_data(TRUST, other) is same
    assert same_trust_data(other, TRUST) is same
    assert same_trust_data(None, None)


@pytest.mark.parametrize(("now", "is_fresh"), [
    (TRUST.received_at + STALE, True),
    (TRUST.received_at + STALE + 0.001, False),
    (TRUST.crl_next_update + 0.001, False),
])
def test_fresh(now: float, is_fresh: bool) -> None:
    assert fresh(TRUST, now, STALE) is is_fresh
    assert fresh(None, now, STALE)  # a member without trust data: nothing to be stale


@pytest.mark.parametrize(("caller", "peer_not_after", "until"), [
    (CALLER, NOW + 3600, NOW + 300),  # the token first
    (CALLER, NOW + 100, NOW + 100),  # the certificate first
    (DELEGATED, NOW + 3600, NOW + 60),  # a link
    (dataclasses.replace(DELEGATED, links=(link(exp=NOW + 900, cert_not_after=NOW + 30),)), NOW + 3600, NOW + 30),
    (dataclasses.replace(DELEGATED, links=()), NOW + 3600, NOW + 200),  # the transaction token
])
def test_valid_until_is_the_first_expiry(caller: Caller, peer_not_after: float, until: float) -> None:
    assert valid_until(dataclasses.replace(PEER, not_after=peer_not_after), caller) == until
