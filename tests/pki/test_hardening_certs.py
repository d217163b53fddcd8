"""Issue 13 item 5, the pure certificate checks: each attack FAILS beside the honest certificate that passes.

* a leaf signed by a CA:TRUE certificate that reuses its issuer's subject ("self-issued": it does not count
  against the issuing CA's path length, so TLS chain building accepts it) is refused: the leaf's authority key
  id must name the issuing CA's key, and that key must have signed it;
* a weak or foreign peer key (RSA-1024, a curve the mesh does not use) is refused;
* a server certificate is the agent dialled only when its SPIFFE ID says so (a DNS SAN is not enough), and the
  CA refuses to put another member's name in a certificate as a DNS SAN.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from support import TD, new_ca, utc

from agentmesh.cli.main import main
from agentmesh.errors import ConfigError, PeerIdentityError
from agentmesh.identity import (
    SpiffeId,
    check_key_strength,
    check_server_identity,
    peer_identity_from_cert,
)
from agentmesh.pki import CertificateAuthority, JoinTokens
from agentmesh.pki.certs import CertProfile, build_certificate, dump_cert, leaf_profile, new_key
from agentmesh.trust import TrustSnapshot, check_certificate, check_mtls_peer

NOW = time.time()


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def leaf(ca: CertificateAuthority, name: str = "a", *, key: object = None, issuer: x509.Certificate | None = None,
         issuer_key: ec.EllipticCurvePrivateKey | None = None, dns: tuple[str, ...] | None = None) -> x509.Certificate:
    """A leaf for agent ``name`` signed by the issuing CA (or by ``issuer``), with the subject key given."""
    public = (key or new_key()).public_key()  # type: ignore[attr-defined]
    return build_certificate(subject_cn=name, subject_key=public,
                             profile=leaf_profile(SpiffeId(TD, f"/agent/{name}"), dns if dns is not None else (name,)),
                             not_before=utc(NOW - 60), not_after=utc(NOW + 3600),
                             issuer_cert=issuer or ca.cert, issuer_key=issuer_key or ca.key)


def self_issued_ca(ca: CertificateAuthority) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The attacker's CA:TRUE certificate, signed by the issuing CA, with the issuing CA's own subject."""
    key = new_key()
    cert = build_certificate(subject_cn=_cn(ca.cert), subject_key=key,
                             profile=CertProfile(True, None, frozenset({"key_cert_sign", "digital_signature"}),
                                                 (), (), ()),
                             not_before=utc(NOW - 60), not_after=utc(NOW + 3600), issuer_cert=ca.cert,
                             issuer_key=ca.key)
    assert cert.subject == ca.cert.subject == cert.issuer  # self-issued, not self-signed
    return cert, key


def without_aki(ca: CertificateAuthority, *, wrong: bool = False) -> x509.Certificate:
    """A leaf the issuing CA really signed, whose AKI is missing (or names another key)."""
    key = new_key()
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a")]))
         .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(utc(NOW - 60)).not_valid_after(utc(NOW + 3600))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                        critical=False)
         .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{TD}/agent/a")]),
                        critical=False))
    if wrong:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(new_key().public_key()),
                            critical=False)
    return b.sign(ca.key, hashes.SHA256())


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    global NOW
    made = new_ca(tmp_path_factory.mktemp("hardening"))
    NOW = time.time()  # the CA's certificates are valid from now on (collection may have been minutes ago)
    return made


# ---------------------------------------------------------------- 1. the issuer: AKI names its key, its key signed
def _honest(ca: CertificateAuthority) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
    return leaf(ca), (ca.cert,)


def _self_issued(ca: CertificateAuthority) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
    x, x_key = self_issued_ca(ca)
    return leaf(ca, issuer=x, issuer_key=x_key), (x, ca.cert)


ISSUER_CASES: dict[str, tuple[Callable[[CertificateAuthority], tuple[x509.Certificate, tuple[x509.Certificate, ...]]],
                              bool]] = {
    "issued by the issuing CA": (_honest, True),
    "signed by a CA:TRUE leaf reusing the issuer's subject": (_self_issued, False),
    "no authority key id": (lambda ca: (without_aki(ca), (ca.cert,)), False),
    "authority key id of another key": (lambda ca: (without_aki(ca, wrong=True), (ca.cert,)), False),
}


@pytest.mark.parametrize("case", ISSUER_CASES)
@pytest.mark.parametrize("how", ["known issuers", "presented chain under the roots"])
def test_issuer_checks(ca: CertificateAuthority, case: str, how: str) -> None:
    make, ok = ISSUER_CASES[case]
    cert, presented = make(ca)
    if how == "known issuers":
        run = lambda: check_certificate(cert, (ca.cert,), TD, NOW, presented=presented)  # noqa: E731
    else:  # as an mTLS server sees it: the chain the peer presented, and the trust bundle's roots
        run = lambda: check_certificate(cert, (), TD, NOW, roots=(ca.root,), presented=presented)  # noqa: E731
    if ok:
        assert run().uri == f"spiffe://{TD}/agent/a"
    else:
        with pytest.raises(PeerIdentityError, match="not issued by an issuing CA"):
            run()


def test_the_self_issued_chain_would_pass_x509_path_checks(ca: CertificateAuthority) -> None:
    """What makes the attack work: each link verifies, and the CA:TRUE certificate is self-issued."""
    x, x_key = self_issued_ca(ca)
    y = leaf(ca, issuer=x, issuer_key=x_key)
    y.verify_directly_issued_by(x)
    x.verify_directly_issued_by(ca.cert)
    assert y.issuer == ca.cert.subject  # by name, the leaf claims the issuing CA


# ---------------------------------------------------------------- 3. key strength
KEYS: dict[str, tuple[Callable[[], object], bool]] = {
    "EC P-256": (lambda: ec.generate_private_key(ec.SECP256R1()), True),
    "EC P-384": (lambda: ec.generate_private_key(ec.SECP384R1()), True),
    "Ed25519": (ed25519.Ed25519PrivateKey.generate, True),
    "RSA-2048": (lambda: rsa.generate_private_key(65537, 2048), True),
    "RSA-1024": (lambda: rsa.generate_private_key(65537, 1024), False),
    "RSA-1536": (lambda: rsa.generate_private_key(65537, 1536), False),
    "EC secp256k1": (lambda: ec.generate_private_key(ec.SECP256K1()), False),
    "EC P-521": (lambda: ec.generate_private_key(ec.SECP521R1()), False),
}


@pytest.mark.parametrize("kind", KEYS)
def test_peer_key_strength(ca: CertificateAuthority, kind: str) -> None:
    make, ok = KEYS[kind]
    cert = leaf(ca, key=make())  # signed by the real issuing CA: only the key differs
    if ok:
        check_key_strength(cert)
        assert peer_identity_from_cert(cert, TD, NOW).name == "a"
        assert check_certificate(cert, (ca.cert,), TD, NOW).name == "a"
    else:
        with pytest.raises(PeerIdentityError, match="too weak or not allowed"):
            peer_identity_from_cert(cert, TD, NOW)
        with pytest.raises(PeerIdentityError, match="too weak or not allowed"):
            check_certificate(cert, (ca.cert,), TD, NOW)


# ---------------------------------------------------------------- 2. the server is the agent dialled
SERVER_CASES: dict[str, tuple[str, tuple[str, ...], str, bool]] = {  # cert name, its DNS SANs, dialled, ok
    "b dialled as b": ("b", ("b",), "b", True),
    "x carrying DNS b dialled as b": ("x", ("x", "b"), "b", False),
    "x dialled as b": ("x", ("x",), "b", False),
    "b dialled as c": ("b", ("b",), "c", False),
}


@pytest.mark.parametrize("case", SERVER_CASES)
def test_server_identity(ca: CertificateAuthority, case: str) -> None:
    name, dns, dialled, ok = SERVER_CASES[case]
    cert = leaf(ca, name, dns=dns)
    if ok:
        assert str(check_server_identity(cert, dialled, TD)) == f"spiffe://{TD}/agent/{dialled}"
    else:
        with pytest.raises(PeerIdentityError, match=f"presents spiffe://{TD}/agent/{name}, not agent {dialled}"):
            check_server_identity(cert, dialled, TD)


def test_server_identity_of_another_trust_domain(ca: CertificateAuthority) -> None:
    with pytest.raises(PeerIdentityError, match="trust domain"):
        check_server_identity(leaf(ca, "b"), "b", "other.org")


@pytest.mark.parametrize("dns", ["b", "control", "bridge", "B"])
def test_ca_refuses_another_members_name_as_dns(tmp_path: Path, dns: str) -> None:
    ca = new_ca(tmp_path)
    ca.issue("b")
    before = len(ca.entries())
    with pytest.raises(ConfigError, match="could be another member's name"):
        ca.issue("x", dns=[dns])
    with pytest.raises(ConfigError, match="could be another member's name"):
        JoinTokens(ca.dir).create("x", ttl=600, dns=[dns], blocked={})
    assert len(ca.entries()) == before  # nothing issued


@pytest.mark.parametrize("dns", ["localhost", "x.mesh.svc", "agents.example.com", "x"])
def test_ca_keeps_localhost_and_host_names(tmp_path: Path, dns: str) -> None:
    ca = new_ca(tmp_path)
    issued = ca.issue("x", dns=[dns])
    names = issued.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert dns in names.get_values_for_type(x509.DNSName)
    check_server_identity(issued.cert, "x", TD)


def test_cli_cert_issue_dns_of_another_member(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = new_ca(tmp_path)
    assert main(["cert", "issue", "x", "--dns", "b", "--ca", str(ca.dir), "--out", str(tmp_path / "x1")]) != 0
    assert "could be another member's name" in capsys.readouterr().err
    assert not (tmp_path / "x1" / "cert.pem").exists()
    assert main(["cert", "issue", "x", "--dns", "localhost", "--dns", "x.example.com", "--ca", str(ca.dir),
                 "--out", str(tmp_path / "x2")]) == 0
    assert (tmp_path / "x2" / "cert.pem").exists()


# ---------------------------------------------------------------- the mTLS form: PEMs as gRPC's auth context has them
@pytest.mark.parametrize("case", ISSUER_CASES)
@pytest.mark.parametrize("snapshot_issuers", [True, False])
def test_mtls_peer_chain(ca: CertificateAuthority, case: str, snapshot_issuers: bool) -> None:
    make, ok = ISSUER_CASES[case]
    cert, presented = make(ca)
    snapshot = TrustSnapshot(frozenset(), frozenset(), frozenset(), NOW + 3600, NOW, bundle=ca.bundle,
                             issuers=(ca.cert,) if snapshot_issuers else ())
    pems = [dump_cert(c) for c in (cert, *presented)]
    if ok:
        assert check_mtls_peer(pems[0], pems, snapshot, TD, NOW).name == "a"
    else:
        with pytest.raises(PeerIdentityError, match="not issued by an issuing CA"):
            check_mtls_peer(pems[0], pems, snapshot, TD, NOW)


def test_mtls_peer_chain_garbage(ca: CertificateAuthority) -> None:
    snapshot = TrustSnapshot(frozenset(), frozenset(), frozenset(), NOW + 3600, NOW, bundle=ca.bundle)
    with pytest.raises(PeerIdentityError, match="could not be parsed"):
        check_mtls_peer(b"not a pem", [], snapshot, TD, NOW)
