"""A delegated call in flight ends when the trust data revokes what it was verified with: the certificate of
any hop that signed its links, a member of its chain, or the client token its transaction was exchanged for;
the same call under unchanged data runs on."""

from __future__ import annotations

import pytest

from agentmesh.context import CallContext
from agentmesh.errors import DelegationError, PeerIdentityError
from agentmesh.identity import PeerIdentity, SpiffeId
from agentmesh.runtime.truststate import TrustState
from agentmesh.tokens.links import Link
from agentmesh.trust import RevocationPolicy, TrustSnapshot

TD = "example.org"
NOW = 1_700_000_000.0


def sid(name: str) -> str:
    return f"spiffe://{TD}/agent/{name}"


def hop(name: str, serial: int) -> Link:
    return Link(signer=sid(name), name=name, serial=serial, thumbprint=f"t-{name}", cert_not_after=NOW + 3600,
                aud="", tth="", ph=None, iat=NOW, exp=NOW + 60, hash=f"h-{name}")


class _Txn:
    subject_jti = "client-jti"


def delegated_call() -> CallContext:
    peer = PeerIdentity(SpiffeId.parse(sid("summarizer")), 3, "t-summarizer", NOW + 3600)
    return CallContext(method="/m", agent="validator", peer=peer, principal="alice", txn=_Txn(),
                       chain=(sid("bridge"), sid("ingestor"), sid("summarizer")),
                       hops=(hop("bridge", 1), hop("ingestor", 2), hop("summarizer", 3)))


def state(serials: frozenset[int] = frozenset(), members: frozenset[str] = frozenset(),
          jtis: frozenset[str] = frozenset()) -> TrustState:
    t = TrustState(RevocationPolicy(), clock=lambda: NOW)
    t.update(TrustSnapshot(serials, jtis, members, NOW + 3600, NOW))
    return t


@pytest.mark.parametrize(("trust", "ended"), [
    pytest.param(state(), None, id="nothing revoked: runs on"),
    pytest.param(state(serials=frozenset({99})), None, id="someone else's certificate revoked: runs on"),
    pytest.param(state(serials=frozenset({2})), "link-revoked", id="an earlier hop's certificate revoked"),
    pytest.param(state(serials=frozenset({1})), "link-revoked", id="the first hop's certificate revoked"),
    pytest.param(state(members=frozenset({"ingestor"})), PeerIdentityError, id="an earlier hop's member revoked"),
    pytest.param(state(jtis=frozenset({"client-jti"})), "txn-revoked", id="the client token revoked"),
])
def test_a_call_in_flight_ends_when_what_verified_it_is_revoked(trust: TrustState,
                                                                ended: str | type[Exception] | None) -> None:
    err = trust.refusal(delegated_call())
    if ended is None:
        assert err is None
    elif isinstance(ended, str):
        assert isinstance(err, DelegationError) and err.check == ended, err
    else:
        assert isinstance(err, ended), err
