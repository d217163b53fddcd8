"""The delegation decision: :func:`check_chain` (structure), :func:`check_signers` (revocation) and
:func:`verify_caller` (the whole decision), with a real CA, real member certificates and keys, the real mesh token
key and a fixed clock.

The scenario: external principal alice gets a transaction token at member a (``req_wl``); the call goes
a -> b -> c -> d, each hop signing a link with its certificate key; d ("me") decides. Every attack is paired with
the honest scenario it was derived from, which passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from agentmesh.clock import FakeClock
from agentmesh.errors import DelegationError, TokenError, Unavailable
from agentmesh.identity import PeerIdentity, cert_thumbprint, peer_identity_from_cert
from agentmesh.pki import CertificateAuthority, IssuedCert
from agentmesh.pki.certs import dump_cert
from agentmesh.tokens import KeySet, TokenAuthority, TokenVerifier, crypto
from agentmesh.tokens.delegation import (
    Caller,
    Checks,
    check_chain,
    check_signers,
    principal_of,
    split_links,
    verify_caller,
    verify_links,
)
from agentmesh.tokens.links import LinkVerifier, cert_der, sign_link
from agentmesh.tokens.txn import TxnVerifier, grant, narrow, sign_txn_token, token_hash
from agentmesh.trust import RevocationPolicy, TrustSnapshot, check_certificate, verify_snapshot

TD = "example.org"
ISSUER = f"spiffe://{TD}"
EXTERNAL = "https://idp.example.com"
AUDIENCE = "agentmesh"
NOW = 1_700_000_000.0
LINK_TTL = 60.0
LEEWAY = 5.0
POLICY = RevocationPolicy(max_staleness=120.0, failure_mode="closed")


def sid(name: str) -> str:
    return f"spiffe://{TD}/agent/{name}"


def ids(*names: str) -> tuple[str, ...]:
    return tuple(sid(n) for n in names)


# ------------------------------------------------------------------------------------------------ the world

@dataclass
class World:
    ca: CertificateAuthority
    certs: dict[str, IssuedCert]  # "a".."e", "b2" (b's second certificate), "e1" (revoked later), "f" (short-lived)
    mesh: TokenAuthority
    external: TokenAuthority
    revoked_jtis: set[str]
    tokens: TokenVerifier
    txns: TxnVerifier
    txn: dict[str, str]  # raw transaction tokens by name
    clean: TrustSnapshot  # the CA's CRL before anything was revoked
    revoked: TrustSnapshot  # the CA's CRL after e1's serial was revoked
    alice_jti: str  # the jti of alice's subject token (tctx.sjti of her transactions)

    def member(self, cert: str) -> str:
        """The member a certificate belongs to ("b2" -> "b")."""
        return self.certs[cert].name

    def peer(self, cert: str) -> PeerIdentity:
        """The mTLS peer presenting certificate ``cert``."""
        return peer_identity_from_cert(self.certs[cert].cert, TD, NOW)

    def check(self, cert: Any, presented: tuple[Any, ...] = ()) -> PeerIdentity:
        return check_certificate(cert, (self.ca.cert,), TD, NOW)

    def checks(self, max_depth: int = 4) -> Checks:
        return Checks(self.tokens, self.txns, LinkVerifier(self.check), ISSUER, max_depth, POLICY, leeway=LEEWAY)

    def own_token(self, cert: str, *, by: TokenAuthority | None = None) -> str:
        """The own (agent) token of the holder of ``cert``, bound to that certificate."""
        c = self.certs[cert]
        return (by or self.mesh).issue(sub=sid(c.name), roles=[f"{c.name}-role"], audience=AUDIENCE, ttl=300,
                                       cnf_thumbprint=cert_thumbprint(c.cert))


def link(w: World, signer: str, aud: str, txn: str, previous: str | None = None, *, at: float = NOW,
         ttl: float = LINK_TTL, key: str | None = None, iss: str | None = None) -> str:
    """A real link by certificate ``signer`` (a name in ``w.certs``) to member ``aud``; ``key``: sign with another
    certificate's key (x5c stays ``signer``'s), ``iss``: name another member in the claims."""
    c = w.certs[signer]
    signing_key = w.certs[key or signer].key
    assert signing_key is not None
    return sign_link(signing_key, cert_der(c.cert), signer=iss or sid(c.name), aud=sid(aud),
                     tth=token_hash(txn), ph=token_hash(previous) if previous else None, now=at, ttl=ttl)


def path(w: World, txn: str, hops: Sequence[str], me: str) -> list[str]:
    """Honest links along ``hops`` (certificate names) ending at member ``me``."""
    out: list[str] = []
    for i, signer in enumerate(hops):
        aud = w.member(hops[i + 1]) if i + 1 < len(hops) else me
        out.append(link(w, signer, aud, txn, out[-1] if out else None))
    return out


def _signed(mesh: TokenAuthority, claims: dict[str, Any], exp: float) -> str:
    return sign_txn_token(mesh.key, mesh.algorithm, mesh.kid, ISSUER, claims, iat=NOW, exp=exp)


def _snapshot(ca: CertificateAuthority) -> TrustSnapshot:
    return verify_snapshot(crl_pem=ca.crl_path.read_bytes(), issuers_pem=dump_cert(ca.cert), trusted_roots=[ca.root],
                           revoked_jtis=(), revoked_members=(), now=NOW)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root: Path = tmp_path_factory.mktemp("delegation")
    clock = FakeClock(NOW)
    ca = CertificateAuthority.init(root / "ca", TD, clock=clock)
    certs = {n: ca.issue(n) for n in ("a", "b", "c", "d", "e")}
    certs["b2"] = ca.issue("b")  # the same member, another certificate (a renewal, a replica)
    certs["e1"] = ca.issue("e")  # revoked below: its serial only, e's other certificate stays good
    certs["f"] = ca.issue("f", ttl=100)  # expires at NOW + 100
    TokenAuthority.init(ca.dir)
    mesh = TokenAuthority.load(ca.dir, issuer=ISSUER, clock=clock)
    external = TokenAuthority(crypto.generate_key("ES256"), "ES256", issuer=EXTERNAL, clock=clock)
    revoked: set[str] = set()
    tokens = TokenVerifier(KeySet.from_authority(mesh) | KeySet.from_authority(external), audience=AUDIENCE,
                           issuers={ISSUER, EXTERNAL}, leeway=30, revoked=revoked.__contains__, clock=clock)
    txns = TxnVerifier(tokens, mesh_issuer=ISSUER, trust_domain=TD)

    alice = tokens.verify(mesh.issue(sub="alice", roles=["client"], audience=AUDIENCE, ttl=600,
                                     extra={"scope": "read write"}))
    bob = tokens.verify(external.issue(sub="bob", roles=["reader"], audience=AUDIENCE, ttl=600,
                                       extra={"scope": "read"}))

    def exchange(subject: Any, requester: str) -> str:
        g = grant(subject, principal_of(subject, ISSUER), requester=sid(requester), trust_domain=TD, scope="",
                  route="/agentmesh.v1.Agent/Invoke", rctx={}, now=NOW, ttl=300)
        return _signed(mesh, dict(g.claims), g.expires_at)

    txn = {"alice@a": exchange(alice, "a"), "other@a": exchange(alice, "a"), "bob@a": exchange(bob, "a")}
    # b, serving a call a -> b, asks for a narrower replacement: prior = (a,), req_wl = b
    current = txns.verify(txn["alice@a"])
    g = narrow(current, ids("a"), requester=sid("b"), trust_domain=TD, scope="read", now=NOW, ttl=300)
    txn["alice@b (replacement)"] = _signed(mesh, dict(g.claims), g.expires_at)

    clean = _snapshot(ca)
    ca.revoke(format(certs["e1"].serial, "x"), reason="key leaked", by="test")
    return World(ca, certs, mesh, external, revoked, tokens, txns, txn, clean, _snapshot(ca), alice.jti)


# ------------------------------------------------------------------------------------------------ scenarios

@dataclass(frozen=True)
class Scenario:
    txn: str  # the name of the transaction token in w.txn
    links: list[str]
    peer: str  # the certificate the mTLS peer presents
    me: str = "d"
    max_depth: int = 4


Build = Callable[[World], Scenario]
T, R = "alice@a", "alice@b (replacement)"


def one_hop(w: World) -> Scenario:
    return Scenario(T, path(w, w.txn[T], ["a"], "d"), "a")


def two_hops(w: World) -> Scenario:
    return Scenario(T, path(w, w.txn[T], ["a", "b"], "d"), "b")


def three_hops(w: World) -> Scenario:
    return Scenario(T, path(w, w.txn[T], ["a", "b", "c"], "d"), "c")


def replacement(w: World) -> Scenario:
    return Scenario(R, path(w, w.txn[R], ["b", "c"], "d"), "c")


def _three(w: World, t: str = T) -> tuple[str, str, str]:
    la, lb, lc = path(w, w.txn[t], ["a", "b", "c"], "d")
    return la, lb, lc


def invented_own_key(w: World) -> Scenario:
    """c invents b's hop with its own key and certificate, naming b."""
    t = w.txn[T]
    la = link(w, "a", "b", t)
    fake_b = link(w, "c", "c", t, la, iss=sid("b"))
    return Scenario(T, [la, fake_b, link(w, "c", "d", t, fake_b)], "c")


def invented_with_b_certificate(w: World) -> Scenario:
    """c invents b's hop with b's certificate in x5c, signed with c's key."""
    t = w.txn[T]
    la = link(w, "a", "b", t)
    fake_b = link(w, "b", "c", t, la, key="c")
    return Scenario(T, [la, fake_b, link(w, "c", "d", t, fake_b)], "c")


def invented_first_hop(w: World) -> Scenario:
    """b holds a stolen transaction token of a's and invents a's first link with a's certificate and its key."""
    t = w.txn[T]
    fake_a = link(w, "a", "b", t, key="b")
    return Scenario(T, [fake_a, link(w, "b", "d", t, fake_a)], "b")


def skipped_hop(w: World) -> Scenario:
    """c (which saw a's link to b) links itself straight after a, leaving b out."""
    t = w.txn[T]
    la = link(w, "a", "b", t)
    return Scenario(T, [la, link(w, "c", "d", t, la)], "c")


def dropped_hop(w: World) -> Scenario:
    la, _, lc = _three(w)
    return Scenario(T, [la, lc], "c")


def dropped_first_hop(w: World) -> Scenario:
    _, lb, lc = _three(w)
    return Scenario(T, [lb, lc], "c")


def reordered(w: World) -> Scenario:
    la, lb, lc = _three(w)
    return Scenario(T, [la, lc, lb], "b")


def reordered_first(w: World) -> Scenario:
    la, lb, lc = _three(w)
    return Scenario(T, [lb, la, lc], "c")


def duplicated_hop(w: World) -> Scenario:
    la, lb, lc = _three(w)
    return Scenario(T, [la, lb, lb, lc], "c")


def first_claims_previous(w: World) -> Scenario:
    t = w.txn[T]
    la = link(w, "a", "d", t, previous=w.txn["other@a"])  # any ph on a first link
    return Scenario(T, [la], "a")


def reused_toward_another_target(w: World) -> Scenario:
    """c presents to d the chain it built toward e (its last link names e)."""
    return Scenario(T, path(w, w.txn[T], ["a", "b", "c"], "e"), "c")


def replayed_by_receiver(w: World) -> Scenario:
    """d replays the chain it received to e, as is."""
    return Scenario(T, path(w, w.txn[T], ["a", "b", "c"], "d"), "d", me="e")


def last_link_not_by_peer(w: World) -> Scenario:
    return replace(three_hops(w), peer="b")


def peer_other_certificate(w: World) -> Scenario:
    """b signed the last link with its certificate b; the connection presents b's other certificate b2."""
    return replace(two_hops(w), peer="b2")


def stolen_txn_token(w: World) -> Scenario:
    """b starts a chain with a transaction token issued to a."""
    return Scenario(T, path(w, w.txn[T], ["b", "c"], "d"), "c")


def replacement_started_early(w: World) -> Scenario:
    """Links for the replacement that start at a, before the replacement's req_wl b."""
    return Scenario(R, path(w, w.txn[R], ["a", "b", "c"], "d"), "c")


def self_addressed_hop(w: World) -> Scenario:
    """b pads the chain with a link to itself before calling c: [a->b, b->b, b->c]."""
    t = w.txn[T]
    la = link(w, "a", "b", t)
    lb = link(w, "b", "b", t, la)
    return Scenario(T, [la, lb, link(w, "b", "c", t, lb)], "b", me="c")


def link_of_other_txn(w: World) -> Scenario:
    return Scenario(T, path(w, w.txn["other@a"], ["a", "b"], "d"), "b")


def middle_link_of_other_txn(w: World) -> Scenario:
    t, other = w.txn[T], w.txn["other@a"]
    la = link(w, "a", "b", t)
    lb = link(w, "b", "c", other, la)
    return Scenario(T, [la, lb, link(w, "c", "d", t, lb)], "c")


def replacement_with_old_links(w: World) -> Scenario:
    """The replacement token with links made for the token it replaced."""
    return Scenario(R, path(w, w.txn[T], ["b", "c"], "d"), "c")


def timed(at: float, ttl: float = LINK_TTL, index: int = 0) -> Build:
    """The 3-hop chain with link ``index`` made at ``at``."""
    def build(w: World) -> Scenario:
        t = w.txn[T]
        out: list[str] = []
        for i, (signer, aud) in enumerate((("a", "b"), ("b", "c"), ("c", "d"))):
            out.append(link(w, signer, aud, t, out[-1] if out else None, at=at if i == index else NOW,
                            ttl=ttl if i == index else LINK_TTL))
        return Scenario(T, out, "c")
    return build


def with_depth(build: Build, max_depth: int) -> Build:
    return lambda w: replace(build(w), max_depth=max_depth)


def no_links(w: World) -> Scenario:
    return Scenario(T, [], "a")


# (case, honest twin, scenario, the chain it verifies to or the failing check)
CASES: list[tuple[str, Build, Build, tuple[str, ...] | str]] = [
    ("honest: 1 hop a -> d", one_hop, one_hop, ids("a")),
    ("honest: 2 hops a -> b -> d", two_hops, two_hops, ids("a", "b")),
    ("honest: 3 hops a -> b -> c -> d", three_hops, three_hops, ids("a", "b", "c")),
    ("honest: replacement (prior a) b -> c -> d", replacement, replacement, ids("a", "b", "c")),
    ("honest: replacement, b -> d", replacement,
     lambda w: Scenario(R, path(w, w.txn[R], ["b"], "d"), "b"), ids("a", "b")),
    ("honest: external principal's transaction", one_hop,
     lambda w: Scenario("bob@a", path(w, w.txn["bob@a"], ["a"], "d"), "a"), ids("a")),
    ("honest: 3 hops at max depth 3", three_hops, with_depth(three_hops, 3), ids("a", "b", "c")),
    ("honest: link expired within the leeway", three_hops, timed(NOW - LINK_TTL - LEEWAY + 1), ids("a", "b", "c")),
    ("honest: link from the future within the leeway", three_hops, timed(NOW + LEEWAY), ids("a", "b", "c")),
    # an earlier link was checked in time by the hop it was addressed to; the transaction token bounds the chain
    ("honest: an earlier link expired since its hop", three_hops, timed(NOW - 2 * LINK_TTL), ids("a", "b", "c")),
    # a member cannot invent earlier hops: they are signed by the keys of their certificates
    ("invented hop: c's key and certificate, naming b", three_hops, invented_own_key, "link-signer"),
    ("invented hop: b's certificate, c's key", three_hops, invented_with_b_certificate, "link-signature"),
    ("invented first hop: a's certificate, b's key", two_hops, invented_first_hop, "link-signature"),
    # ... nor drop, skip, duplicate or reorder them: each link names the previous one and its successor
    ("skipped hop: c links itself after a's link to b", three_hops, skipped_hop, "link-aud"),
    ("dropped hop b", three_hops, dropped_hop, "link-order"),
    ("dropped first hop a", three_hops, dropped_first_hop, "first-hop"),
    ("reordered hops a c b", three_hops, reordered, "link-order"),
    ("reordered hops b a c", three_hops, reordered_first, "first-hop"),
    ("duplicated hop b", three_hops, duplicated_hop, "link-order"),
    ("self-addressed hop pads the chain", two_hops, self_addressed_hop, "link-aud"),
    ("first link claims a previous hop", one_hop, first_claims_previous, "link-order"),
    # ... nor reuse a chain toward another target, or present one that is not its own
    ("chain reused toward another target (audience)", three_hops, reused_toward_another_target, "audience"),
    ("chain replayed by its receiver to another member", three_hops, replayed_by_receiver, "last-hop"),
    ("last link not by the mTLS peer", three_hops, last_link_not_by_peer, "last-hop"),
    ("last link by the peer's other certificate", two_hops, peer_other_certificate, "last-hop"),
    # ... nor start one with a transaction token issued to someone else
    ("first link not by req_wl (stolen txn token)", three_hops, stolen_txn_token, "first-hop"),
    ("replacement: links start before its req_wl", replacement, replacement_started_early, "first-hop"),
    # ... nor mix transactions
    ("links of another txn token", two_hops, link_of_other_txn, "link-txn"),
    ("middle link of another txn token", three_hops, middle_link_of_other_txn, "link-txn"),
    ("replacement with the links of the token it replaced", replacement, replacement_with_old_links, "link-txn"),
    # time
    ("expired last link, just past the leeway", three_hops, timed(NOW - LINK_TTL - LEEWAY - 1, index=2),
     "link-expired"),
    ("expired last link", three_hops, timed(NOW - 2 * LINK_TTL, index=2), "link-expired"),
    ("link from the future", three_hops, timed(NOW + LEEWAY + 1), "link-expired"),
    ("middle link from the future", three_hops, timed(NOW + 3600, index=1), "link-expired"),
    # limits and shape
    ("3 hops, max depth 2", three_hops, with_depth(three_hops, 2), "depth"),
    ("replacement: prior counts toward the depth", replacement, with_depth(replacement, 2), "depth"),
    ("transaction token without links", one_hop, no_links, "links"),
]

ROWS = [pytest.param(twin, build, expected, id=name) for name, twin, build, expected in CASES]


def decide(w: World, scn: Scenario) -> tuple[str, ...]:
    """Signatures (LinkVerifier), then the structure (check_chain), as a member does."""
    txn = w.txns.verify(w.txn[scn.txn])
    verifier = LinkVerifier(w.check)
    links = [verifier.verify(raw) for raw in scn.links]
    peer = w.peer(scn.peer)
    return check_chain(txn, links, peer_uri=peer.uri, peer_thumbprint=peer.thumbprint, me=sid(scn.me), now=NOW,
                       leeway=LEEWAY, max_depth=scn.max_depth)


def expect(run: Callable[[], tuple[str, ...]], expected: tuple[str, ...] | str) -> None:
    if isinstance(expected, tuple):
        assert run() == expected
        return
    with pytest.raises(DelegationError) as err:
        run()
    assert err.value.check == expected, err.value.message


@pytest.mark.parametrize(("twin", "build", "expected"), ROWS)
def test_check_chain(world: World, twin: Build, build: Build, expected: tuple[str, ...] | str) -> None:
    assert decide(world, twin(world))  # the honest twin verifies
    expect(lambda: decide(world, build(world)), expected)


@pytest.mark.parametrize(("twin", "build", "expected"), ROWS)
def test_verify_caller_same_table(world: World, twin: Build, build: Build, expected: tuple[str, ...] | str) -> None:
    """The same table through the whole decision a member runs on a call: own token, transaction token, links,
    signers (fresh trust data)."""
    def call(scn: Scenario) -> tuple[str, ...]:
        caller = verify_caller(world.peer(scn.peer), world.own_token(scn.peer), world.txn[scn.txn],
                               ",".join(scn.links), me=sid(scn.me), checks=world.checks(scn.max_depth),
                               snapshot=world.clean, now=NOW)
        assert caller.txn is not None and caller.principal == caller.txn.sub
        return caller.chain

    honest = twin(world)
    assert call(honest)
    expect(lambda: call(build(world)), expected)


def test_check_chain_for_the_control_plane(world: World) -> None:
    """``peer_uri=None`` (a member proving the chain it serves, for a replacement): the last hop is not compared
    to a connection, but the chain must still be addressed to the asking member."""
    txn = world.txns.verify(world.txn[T])
    verifier = LinkVerifier(world.check)
    links = [verifier.verify(raw) for raw in path(world, world.txn[T], ["a", "b"], "c")]
    kw: dict[str, Any] = {"peer_uri": None, "peer_thumbprint": None, "now": NOW, "leeway": LEEWAY, "max_depth": 4}
    assert check_chain(txn, links, me=sid("c"), **kw) == ids("a", "b")
    with pytest.raises(DelegationError) as err:
        check_chain(txn, links, me=sid("d"), **kw)  # d cannot get a replacement with c's chain
    assert err.value.check == "audience"
    # what narrow() is given is what the replacement's verifier recomputes downstream
    verified, chain, _ = verify_links(world.txn[T], path(world, world.txn[T], ["a", "b"], "c"),
                                      checks=world.checks(), snapshot=world.clean, peer=None, me=sid("c"), now=NOW)
    assert (verified.txn, chain) == (txn.txn, ids("a", "b"))


@pytest.mark.parametrize(("value", "max_depth", "expected"), [
    pytest.param(None, 4, 0, id="no header"),
    pytest.param("", 4, 0, id="empty"),
    pytest.param("x.y.z", 4, 1, id="one"),
    pytest.param(",".join(["x.y.z"] * 4), 4, 4, id="at the limit"),
    pytest.param(",".join(["x.y.z"] * 5), 4, "depth", id="over the limit"),
    pytest.param("%%," * 100, 4, "depth", id="garbage over the limit: depth, nothing parsed"),
    pytest.param(",,", 2, "depth", id="empty members count"),
    pytest.param("a" * 100_000 + ",b", 1, "depth", id="huge value over the limit"),
])
def test_split_links(value: str | None, max_depth: int, expected: int | str) -> None:
    if isinstance(expected, int):
        assert len(split_links(value, max_depth)) == expected
    else:
        with pytest.raises(DelegationError) as err:
            split_links(value, max_depth)
        assert err.value.check == expected


def test_depth_is_refused_before_any_link_is_parsed(world: World) -> None:
    """Five links at max depth 4: refused as too deep even though none is a link (no parsing, no signature)."""
    checked: list[object] = []

    def check(cert: Any, presented: tuple[Any, ...] = ()) -> PeerIdentity:
        checked.append(cert)
        return world.check(cert)

    checks = replace(world.checks(), links=LinkVerifier(check))
    raw = three_hops(world).links
    honest = verify_caller(world.peer("c"), world.own_token("c"), world.txn[T], ",".join(raw), me=sid("d"),
                           checks=checks, snapshot=world.clean, now=NOW)
    assert honest.chain == ids("a", "b", "c") and checked
    checked.clear()
    for links in (",".join(["not-a-link"] * 5), ",".join([raw[0]] * 5)):
        with pytest.raises(DelegationError) as err:
            verify_caller(world.peer("c"), world.own_token("c"), world.txn[T], links, me=sid("d"), checks=checks,
                          snapshot=world.clean, now=NOW)
        assert err.value.check == "depth"
    assert not checked


# ------------------------------------------------------------------------------------------------ check_signers

@dataclass(frozen=True)
class SignerCase:
    path: tuple[str, ...]  # certificate names, a first
    snapshot: Callable[[World], TrustSnapshot | None]
    at: float = NOW
    policy: RevocationPolicy = POLICY


def _members_revoked(*names: str) -> Callable[[World], TrustSnapshot]:
    return lambda w: replace(w.clean, revoked_members=frozenset(names))


# (case, the signers and the trust data, None: accepted, or the check / the error that refuses)
SIGNERS: list[tuple[str, SignerCase, str | type[Exception] | None]] = [
    ("fresh data, nothing revoked", SignerCase(("a", "b", "c"), lambda w: w.clean), None),
    ("revoked serial: e1 (CRL)", SignerCase(("a", "e1"), lambda w: w.revoked), "link-revoked"),
    ("e's other certificate: good", SignerCase(("a", "e"), lambda w: w.revoked), None),
    ("revoked member in the middle", SignerCase(("a", "b", "c"), _members_revoked("b")), "link-revoked"),
    ("revoked member on the first hop", SignerCase(("a", "b", "c"), _members_revoked("a")), "link-revoked"),
    ("another member revoked", SignerCase(("a", "b", "c"), _members_revoked("e")), None),
    ("signer certificate still valid", SignerCase(("a", "f"), lambda w: w.clean.confirmed(NOW + 50), NOW + 50),
     None),
    ("signer certificate expired since the link was verified",
     SignerCase(("a", "f"), lambda w: w.clean.confirmed(NOW + 101), NOW + 101), "link-revoked"),
    ("no trust data, closed: signers refused as new peers", SignerCase(("a", "b"), lambda w: None), Unavailable),
    ("no trust data, open: signers accepted (warning)",
     SignerCase(("a", "b"), lambda w: None, policy=RevocationPolicy(failure_mode="open")), None),
    # cannot tell: the member's revocation.failure_mode decides, and the call is UNAVAILABLE, not refused as revoked
    ("no trust data, strict", SignerCase(("a", "b"), lambda w: None,
                                         policy=RevocationPolicy(failure_mode="strict")), Unavailable),
    ("stale trust data, strict", SignerCase(("a", "b"), lambda w: w.clean, NOW + 121,
                                            RevocationPolicy(failure_mode="strict")), Unavailable),
    ("stale trust data, closed: signers refused as new peers", SignerCase(("a", "b"), lambda w: w.clean, NOW + 121),
     Unavailable),
]


@pytest.mark.parametrize(("case", "expected"), [pytest.param(c, e, id=n) for n, c, e in SIGNERS])
def test_check_signers(world: World, case: SignerCase, expected: str | type[Exception] | None) -> None:
    verifier = LinkVerifier(world.check)
    links = [verifier.verify(raw) for raw in path(world, world.txn[T], case.path, "d")]
    snapshot = case.snapshot(world)
    if expected is None:
        check_signers(links, snapshot, now=case.at, policy=case.policy)
        return
    check_signers(links, world.clean.confirmed(NOW), now=NOW, policy=POLICY)  # the honest twin
    if isinstance(expected, type):
        with pytest.raises(expected):
            check_signers(links, snapshot, now=case.at, policy=case.policy)
        return
    with pytest.raises(DelegationError) as err:
        check_signers(links, snapshot, now=case.at, policy=case.policy)
    assert err.value.check == expected


def test_verify_caller_refuses_a_revoked_hop(world: World) -> None:
    links = ",".join(path(world, world.txn[T], ["a", "e1"], "d"))
    kw: dict[str, Any] = {"me": sid("d"), "checks": world.checks(), "now": NOW}
    assert verify_caller(world.peer("e1"), world.own_token("e1"), world.txn[T], links, snapshot=world.clean,
                         **kw).chain == ids("a", "e")
    with pytest.raises(DelegationError) as err:
        verify_caller(world.peer("e1"), world.own_token("e1"), world.txn[T], links, snapshot=world.revoked, **kw)
    assert err.value.check == "link-revoked"


# ------------------------------------------------------------------------------------------------ verify_caller

def _call(w: World, peer: str, own: str | None, txn: str | None = None, links: str | None = None,
          **kw: Any) -> Caller:
    return verify_caller(w.peer(peer), own, txn, links, me=sid("d"), checks=kw.pop("checks", w.checks()),
                         snapshot=w.clean, now=NOW, **kw)


def test_direct_call_yields_the_peer_itself(world: World) -> None:
    caller = _call(world, "c", world.own_token("c"))
    assert (caller.principal, caller.roles, caller.txn, caller.chain, caller.links, caller.scope) == \
        (sid("c"), ("c-role",), None, (), (), ())
    assert caller.own.sub == sid("c")


def test_delegated_call_yields_the_transaction(world: World) -> None:
    scn = three_hops(world)
    caller = _call(world, "c", world.own_token("c"), world.txn[T], ",".join(scn.links))
    assert caller.principal == "alice" and caller.roles == ("client",) and caller.scope == ("read", "write")
    assert caller.chain == ids("a", "b", "c") and [x.signer for x in caller.links] == list(ids("a", "b", "c"))
    assert caller.own.sub == sid("c")  # the peer's own token is kept (re-checked for revocation)
    assert caller.txn is not None and caller.txn.subject_jti == world.alice_jti and caller.txn.req_wl == sid("a")
    # the replacement: narrower scope, same transaction, prior kept in the chain
    r = replacement(world)
    narrowed = _call(world, "c", world.own_token("c"), world.txn[R], ",".join(r.links))
    assert narrowed.scope == ("read",) and narrowed.chain == ids("a", "b", "c")
    assert narrowed.txn is not None and narrowed.txn.txn == caller.txn.txn and narrowed.principal == "alice"
    # an external principal keeps its issuer in its name
    bob = _call(world, "a", world.own_token("a"), world.txn["bob@a"], ",".join(path(world, world.txn["bob@a"],
                                                                                    ["a"], "d")))
    assert bob.principal == f"{EXTERNAL}#bob" and bob.roles == ("reader",) and bob.chain == ids("a")


def _unbound(w: World) -> str:
    return w.mesh.issue(sub="alice", roles=["client"], audience=AUDIENCE, ttl=300)


def _external_bound(w: World) -> str:
    """An external issuer's token for c's SPIFFE ID, bound to c's very certificate: it verifies, but only the mesh
    issuer speaks for members."""
    return w.own_token("c", by=w.external)


def _revoked_own(w: World) -> str:
    token = w.own_token("c")
    w.revoked_jtis.add(w.tokens.inspect(token).jti)
    return token


OWN: list[tuple[str, Callable[[World], str | None], str | None, str]] = [
    # (case, own token of the peer c, transaction token, the message)
    ("own token missing", lambda w: None, None, "missing bearer token"),
    ("own token missing, delegated call", lambda w: None, T, "missing bearer token"),
    ("own token unbound", _unbound, None, "not bound to a certificate"),
    ("own token of another member", lambda w: w.own_token("b"), None, "bound to another certificate"),
    ("own token of the peer's other certificate", lambda w: w.own_token("b2"), None, "bound to another certificate"),
    ("own token from an external issuer", _external_bound, None, "must come from the mesh issuer"),
    ("own token from an external issuer, delegated call", _external_bound, T, "must come from the mesh issuer"),
    ("own token revoked", _revoked_own, None, "revoked"),
    ("the transaction token as own token", lambda w: w.txn[T], T, "type not accepted"),
]


@pytest.mark.parametrize(("own", "txn", "message"), [pytest.param(o, t, m, id=n) for n, o, t, m in OWN])
def test_verify_caller_own_token(world: World, own: Callable[[World], str | None], txn: str | None,
                                 message: str) -> None:
    links = ",".join(three_hops(world).links) if txn else None
    raw_txn = world.txn[txn] if txn else None
    assert _call(world, "c", world.own_token("c"), raw_txn, links).own.sub == sid("c")  # the honest twin
    token = own(world)
    try:
        with pytest.raises(TokenError, match=message) as err:
            _call(world, "c", token, raw_txn, links)
    finally:
        world.revoked_jtis.clear()
    assert not isinstance(err.value, DelegationError)  # the caller itself is not authenticated


@pytest.mark.parametrize(("txn", "links", "expected"), [
    pytest.param(T, "three", ids("a", "b", "c"), id="honest: transaction token and links"),
    pytest.param(None, None, (), id="honest: direct call"),
    pytest.param(None, "", (), id="honest: empty links header, direct call"),
    pytest.param(None, "three", "links", id="links without a transaction token"),
    pytest.param(T, None, "links", id="transaction token without links"),
    pytest.param(T, "", "links", id="transaction token with an empty links header"),
    pytest.param(T, "three,", "link-format", id="a trailing empty link"),
    pytest.param("", "three", "txn-token", id="empty transaction token"),
    pytest.param("revoked", "three", "txn-revoked", id="subject token revoked"),
])
def test_verify_caller_txn_and_links(world: World, txn: str | None, links: str | None,
                                     expected: tuple[str, ...] | str) -> None:
    three = ",".join(three_hops(world).links)
    raw_links = None if links is None else links.replace("three", three)
    raw_txn = None if txn is None else world.txn.get(txn, "")
    if txn == "revoked":
        raw_txn = world.txn[T]
        world.revoked_jtis.add(world.alice_jti)
    try:
        expect(lambda: _call(world, "c", world.own_token("c"), raw_txn, raw_links).chain, expected)
    finally:
        world.revoked_jtis.clear()
