"""Hop links (``txn-link+jwt``): one signed statement per hop, checked with real keys and real mesh certificates.

Every refusal is paired with the honest link it was derived from, which verifies.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from support import custom_leaf

from agentmesh.clock import FakeClock
from agentmesh.errors import DelegationError
from agentmesh.identity import PeerIdentity, cert_thumbprint
from agentmesh.pki import CertificateAuthority, IssuedCert
from agentmesh.tokens import crypto
from agentmesh.tokens.links import LINK_TYP, MAX_LINK_BYTES, HopSigner, LinkVerifier, cert_der, sign_link
from agentmesh.tokens.txn import token_hash
from agentmesh.trust import check_certificate

TD = "example.org"
NOW = 1_700_000_000.0
TTL = 60.0
TTH = token_hash("header.payload.signature")  # the hash of some transaction token
PH = token_hash("previous.link.signature")


def sid(name: str, td: str = TD) -> str:
    return f"spiffe://{td}/agent/{name}"


def b64url(obj: object) -> str:
    return crypto.b64url_encode(json.dumps(obj, separators=(",", ":")).encode())


def x5c(cert: x509.Certificate) -> str:
    return base64.b64encode(cert_der(cert)).decode("ascii")


@dataclass(frozen=True)
class World:
    ca: CertificateAuthority
    a: IssuedCert  # the signer
    b: IssuedCert  # another member (the audience)
    foreign: IssuedCert  # "a" again, but from another CA of the same trust domain name
    a_p384: IssuedCert  # "a" with a P-384 key (the CA issues those from a CSR)
    leaves: dict[str, tuple[x509.Certificate, ec.EllipticCurvePrivateKey]]  # certificates with one property bent

    def check(self, cert: x509.Certificate, presented: tuple[x509.Certificate, ...] = ()) -> PeerIdentity:
        return check_certificate(cert, (self.ca.cert,), TD, NOW, roots=(self.ca.root,), presented=presented)

    def verifier(self) -> LinkVerifier:
        return LinkVerifier(self.check)


def _leaf(ca: CertificateAuthority, root: Path, name: str, *, expired: bool = False,
          **kw: Any) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for member "a", issued by the real CA (or self-signed), with one property bent."""
    window = (NOW - 7200, NOW - 1) if expired else (NOW - 60, NOW + 3600)
    out = custom_leaf(ca, root / name, "a", not_before=window[0], not_after=window[1], **kw)
    cert = x509.load_pem_x509_certificates((out / "cert.pem").read_bytes())[0]
    key = serialization.load_pem_private_key((out / "key.pem").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("links")
    clock = FakeClock(NOW)
    ca = CertificateAuthority.init(root / "ca", TD, clock=clock)
    other = CertificateAuthority.init(root / "other-ca", TD, clock=clock)
    leaves = {
        "self-signed": _leaf(ca, root, "self-signed", self_signed=True),
        "no clientAuth EKU": _leaf(ca, root, "no-client", eku=(ExtendedKeyUsageOID.SERVER_AUTH,)),
        "CA certificate as a leaf": _leaf(ca, root, "ca-leaf", is_ca=True),
        "other trust domain": _leaf(ca, root, "other-td", trust_domain="evil.org"),
        "expired": _leaf(ca, root, "expired", expired=True),
    }
    return World(ca, ca.issue("a"), ca.issue("b"), other.issue("a"),
                 ca.issue("a", key=ec.generate_private_key(ec.SECP384R1())), leaves)


def key(issued: IssuedCert) -> ec.EllipticCurvePrivateKey:
    assert issued.key is not None
    return issued.key


def honest(w: World, **kw: Any) -> str:
    args: dict[str, Any] = {"signer": sid("a"), "aud": sid("b"), "tth": TTH, "ph": PH, "now": NOW, "ttl": TTL}
    args.update(kw)
    return sign_link(key(w.a), cert_der(w.a.cert), **args)


def forge(key: Any, header: dict[str, Any], claims: dict[str, Any], *, alg: str = "ES256") -> str:
    """A link from raw parts, signed for real with ``key`` (the attacker's own, or a member's)."""
    signing_input = f"{b64url(header)}.{b64url(claims)}"
    return f"{signing_input}.{crypto.b64url_encode(crypto.sign(alg, key, signing_input.encode()))}"


def header(cert: x509.Certificate, **kw: Any) -> dict[str, Any]:
    h = {"alg": "ES256", "typ": LINK_TYP, "x5c": [x5c(cert)], **kw}
    return {k: v for k, v in h.items() if v is not ...}


def claims(**kw: Any) -> dict[str, Any]:
    c = {"iss": sid("a"), "aud": sid("b"), "tth": TTH, "ph": PH, "iat": int(NOW), "exp": int(NOW + TTL),
         "jti": "0123456789abcdef", **kw}
    return {k: v for k, v in c.items() if v is not ...}


def tamper_payload(link: str, **changes: Any) -> str:
    """The same signature over other claims."""
    h, p, s = link.split(".")
    body = json.loads(crypto.b64url_decode(p))
    body.update(changes)
    return f"{h}.{b64url(body)}.{s}"


def test_honest_link_verifies_with_the_right_fields(world: World) -> None:
    raw = honest(world)
    link = world.verifier().verify(raw)
    assert link.signer == sid("a") and link.name == "a"
    assert link.serial == world.a.serial and link.thumbprint == cert_thumbprint(world.a.cert)
    assert link.cert_not_after == world.a.cert.not_valid_after_utc.timestamp()
    assert (link.aud, link.tth, link.ph) == (sid("b"), TTH, PH)
    assert (link.iat, link.exp) == (NOW, NOW + TTL)
    assert link.hash == token_hash(raw)
    first = world.verifier().verify(honest(world, ph=None))
    assert first.ph is None  # a first link claims no previous hop


def test_verified_links_are_cached_by_hash(world: World) -> None:
    v = world.verifier()
    raw = honest(world)
    assert v.verify(raw) is v.verify(raw)
    v.clear_cache()
    assert v.verify(raw) == v.verify(raw)


Build = Callable[[World], str]


def bent_certificate(bent: str) -> Build:
    """A link signed with the key of a bent certificate for "a", naming the SPIFFE ID it carries."""
    td = "evil.org" if bent == "other trust domain" else TD
    return lambda w: forge(w.leaves[bent][1], header(w.leaves[bent][0]), claims(iss=sid("a", td)))


def with_header(**kw: Any) -> Build:
    """A link by "a" with its key and certificate, and a header changed (``...`` removes a member)."""
    return lambda w: forge(w.a.key, header(w.a.cert, **kw), claims())


def with_claims(**kw: Any) -> Build:
    """A link by "a" with its key and certificate, and claims changed (``...`` removes a member)."""
    return lambda w: forge(w.a.key, header(w.a.cert), claims(**kw))


# (case, honest twin, attack, expected check); the honest twin always verifies
REFUSALS: list[tuple[str, Build, Build, str]] = [
    # the certificate in x5c must chain to an issuing CA of the mesh and be a valid SVID
    ("certificate from a foreign CA (same trust domain name)",
     honest, lambda w: sign_link(key(w.foreign), cert_der(w.foreign.cert), signer=sid("a"), aud=sid("b"), tth=TTH,
                                 ph=PH, now=NOW, ttl=TTL), "link-certificate"),
    *[(f"certificate: {bent}", honest, bent_certificate(bent), "link-certificate")
      for bent in ("self-signed", "no clientAuth EKU", "CA certificate as a leaf", "other trust domain", "expired")],
    ("certificate not DER", honest,
     lambda w: forge(w.a.key, header(w.a.cert, x5c=[base64.b64encode(b"not a certificate").decode()]), claims()),
     "link-certificate"),
    ("certificate not base64", honest, with_header(x5c=["%%%"]), "link-certificate"),
    # the signature: the certificate's key over these very bytes
    ("tampered audience", honest, lambda w: tamper_payload(honest(w), aud=sid("c")), "link-signature"),
    ("tampered tth", honest, lambda w: tamper_payload(honest(w), tth=token_hash("other")), "link-signature"),
    ("tampered exp", honest, lambda w: tamper_payload(honest(w), exp=int(NOW + 86400)), "link-signature"),
    ("signature cut off", honest, lambda w: honest(w).rsplit(".", 1)[0] + ".AAAA", "link-signature"),
    ("b's certificate, a's key", lambda w: forge(w.b.key, header(w.b.cert), claims(iss=sid("b"))),
     lambda w: forge(w.a.key, header(w.b.cert), claims(iss=sid("b"))), "link-signature"),
    ("alg EdDSA on a P-256 key", honest, with_header(alg="EdDSA"), "link-signature"),
    ("alg ES384 on a P-256 key", honest, with_header(alg="ES384"), "link-signature"),
    ("alg none", honest,
     lambda w: forge(w.a.key, header(w.a.cert, alg="none"), claims()).rsplit(".", 1)[0] + ".AA", "link-signature"),
    ("alg HS256 keyed with the certificate", honest,
     lambda w: forge(cert_der(w.a.cert), header(w.a.cert, alg="HS256"), claims(), alg="HS256"), "link-signature"),
    ("alg missing", honest, with_header(alg=...), "link-signature"),
    # the signer named in the claims must be the certificate's
    ("a's key and certificate, naming b", honest, with_claims(iss=sid("b")), "link-signer"),
    ("iss missing", honest, with_claims(iss=...), "link-signer"),
    # the header: nothing but alg, typ and exactly one certificate
    *[(f"extra header {h}", honest, with_header(**{h: "x"}), "link-format")
      for h in ("jku", "jwk", "kid", "x5u", "crit", "zip")],
    ("typ of an access token", honest, with_header(typ="at+jwt"), "link-format"),
    ("typ of a transaction token", honest, with_header(typ="txntoken+jwt"), "link-format"),
    ("typ missing", honest, with_header(typ=...), "link-format"),
    ("three certificates in x5c", honest,
     lambda w: forge(w.a.key, header(w.a.cert, x5c=[x5c(w.a.cert), x5c(w.ca.cert), x5c(w.ca.cert)]), claims()),
     "link-format"),
    ("x5c empty", honest, with_header(x5c=[]), "link-format"),
    ("x5c not a list", honest, lambda w: forge(w.a.key, header(w.a.cert, x5c=x5c(w.a.cert)), claims()),
     "link-format"),
    ("x5c missing", honest, with_header(x5c=...), "link-format"),
    # size, encoding, shape
    ("oversize", honest, with_claims(pad="x" * MAX_LINK_BYTES), "link-format"),
    ("non-ASCII", honest, lambda w: honest(w)[:-2] + "é", "link-format"),
    ("two segments", honest, lambda w: honest(w).rsplit(".", 1)[0], "link-format"),
    ("empty", honest, lambda w: "", "link-format"),
    ("duplicate claim", honest,
     lambda w: forge(w.a.key, header(w.a.cert), claims()).replace(
         b64url(claims()), crypto.b64url_encode(b'{"aud":"x","aud":"y"}')), "link-format"),
    # claims: present and well-typed
    *[(f"claim {name} {what}", honest, with_claims(**{name: value}), "link-format")
      for name, what, value in [("aud", "missing", ...), ("tth", "missing", ...), ("tth", "not a string", 1),
                                ("ph", "not a string", ["x"]), ("iat", "missing", ...), ("exp", "a boolean", True),
                                ("exp", "a string", "soon"), ("jti", "missing", ...), ("jti", "too long", "j" * 65),
                                ("jti", "empty", "")]],
]


@pytest.mark.parametrize(("make_honest", "attack", "check"), [pytest.param(*r[1:], id=r[0]) for r in REFUSALS])
def test_link_refusals(world: World, make_honest: Build, attack: Build, check: str) -> None:
    assert world.verifier().verify(make_honest(world)).signer.startswith(f"spiffe://{TD}/agent/")
    with pytest.raises(DelegationError) as err:
        world.verifier().verify(attack(world))
    assert err.value.check == check, err.value.message


def test_refusals_never_quote_the_link(world: World) -> None:
    for _, _, attack, _ in REFUSALS:
        raw = attack(world)
        with pytest.raises(DelegationError) as err:
            world.verifier().verify(raw)
        for part in (p for p in raw.split(".") if len(p) > 16):
            assert part not in err.value.message


def test_a_cached_certificate_still_needs_a_valid_signature(world: World) -> None:
    """The certificate cache only spares the chain check: a forged link with a known x5c is still refused."""
    v = world.verifier()
    v.verify(honest(world))
    with pytest.raises(DelegationError) as err:
        v.verify(forge(world.b.key, header(world.a.cert), claims()))
    assert err.value.check == "link-signature"


def test_p384_member_key_signs_and_verifies_links(world: World) -> None:
    """The CA issues P-384 certificates (from a CSR): such a member signs ES384 links that verify; a link whose
    alg does not match its key is refused."""
    made = HopSigner(key(world.a_p384), world.a_p384.cert, sid("a"), ttl=TTL, clock=lambda: NOW).link(
        "t.x.y", (), sid("b"))
    assert world.verifier().verify(made).signer == sid("a")
    raw = forge(world.a_p384.key, header(world.a_p384.cert, alg="ES256"), claims(), alg="ES384")
    with pytest.raises(DelegationError) as err:
        world.verifier().verify(raw)
    assert err.value.check == "link-signature"


# ---------------------------------------------------------------------------------------------- HopSigner

@pytest.mark.parametrize(("later", "same_target", "same_links", "reused"), [
    pytest.param(0.0, True, True, True, id="same hop, at once: reused"),
    pytest.param(TTL / 2 - 0.001, True, True, True, id="same hop, just under half the ttl: reused"),
    pytest.param(TTL / 2, True, True, False, id="same hop, half the ttl: new link"),
    pytest.param(TTL - 1, True, True, False, id="same hop, near expiry: new link"),
    pytest.param(1.0, False, True, False, id="another target: new link"),
    pytest.param(1.0, True, False, False, id="another previous link: new link"),
])
def test_hop_signer_reuse(world: World, later: float, same_target: bool, same_links: bool, reused: bool) -> None:
    clock = FakeClock(NOW)
    signer = HopSigner(key(world.a), world.a.cert, sid("a"), ttl=TTL, clock=clock)
    txn = "header.payload.signature"
    previous, other = [honest(world, ph=None)], [honest(world, ph=PH)]
    first = signer.link(txn, previous, sid("b"))
    clock.advance(later)
    second = signer.link(txn, previous if same_links else other, sid("b") if same_target else sid("c"))
    assert (second == first) is reused
    v = LinkVerifier(lambda cert, presented: check_certificate(cert, (world.ca.cert,), TD, clock()))
    for raw in (first, second):
        link = v.verify(raw)
        assert link.signer == sid("a") and link.tth == token_hash(txn)
        assert link.exp - link.iat == pytest.approx(TTL, abs=1)
    made = v.verify(second)
    assert made.iat == int(clock() if not reused else NOW)
    assert made.ph == token_hash((previous if same_links else other)[-1])
    assert made.aud == (sid("b") if same_target else sid("c"))
    assert made.exp > clock()  # a link it hands out always has time left


def test_a_member_renewed_by_a_new_intermediate_is_known_before_the_trust_data_names_it(tmp_path: Path) -> None:
    """Right after `ca rotate`, a member renewed by the new issuing CA signs links that members whose trust data
    still names only the old one accept: the link presents its issuer, which a trusted root signed (as a TLS
    handshake would). A presented CA that no trusted root signed vouches for nothing."""
    clock = FakeClock(NOW)
    ca = CertificateAuthority.init(tmp_path / "ca", TD, clock=clock)
    old = ca.cert
    ca.rotate()
    renewed = ca.issue("a", ttl=3600)
    rogue = CertificateAuthority.init(tmp_path / "rogue", TD, clock=clock)
    rogue_leaf = rogue.issue("a", ttl=3600)
    roots = (ca.root,)

    def verifier(trusted_roots: tuple[x509.Certificate, ...]) -> LinkVerifier:
        return LinkVerifier(lambda cert, presented: check_certificate(cert, (old,), TD, NOW, roots=trusted_roots,
                                                                      presented=presented))

    def made(issued: IssuedCert, issuer: x509.Certificate | None) -> str:
        return sign_link(key(issued), cert_der(issued.cert), signer=sid("a"), aud=sid("b"), tth=TTH, ph=None,
                         now=NOW, ttl=TTL, issuer_der=cert_der(issuer) if issuer is not None else None)

    assert verifier(roots).verify(made(renewed, ca.cert)).signer == sid("a")  # the honest renewed member
    refused = {
        "new issuer not presented": (made(renewed, None), roots),
        "presented, but no trusted root signed it": (made(renewed, ca.cert), ()),
        "a rogue CA presented": (made(rogue_leaf, rogue.cert), roots),
    }
    for what, (raw, trusted) in refused.items():
        with pytest.raises(DelegationError) as err:
            verifier(trusted).verify(raw)
        assert err.value.check == "link-certificate", what
