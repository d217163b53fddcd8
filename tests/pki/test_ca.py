"""The mini CA: every extension of the root, the intermediate and the leaf; files, index, CRL."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from support import TD, new_ca

from agentmesh.clock import FakeClock
from agentmesh.errors import ConfigError, PKIError
from agentmesh.pki import CertificateAuthority, write_identity
from agentmesh.pki.certs import dump_cert

YEAR = 365 * 86400


def ext(cert: x509.Certificate, cls: type) -> x509.Extension:  # type: ignore[type-arg]
    return cert.extensions.get_extension_for_class(cls)


def test_root_and_intermediate_profiles(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000)
    ca = CertificateAuthority.init(tmp_path / "ca", TD, clock=clock)
    for cert, ttl, pathlen in ((ca.root, 10 * YEAR, 1), (ca.cert, YEAR, 0)):
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert isinstance(cert.public_key().curve, ec.SECP256R1)
        bc = ext(cert, x509.BasicConstraints)
        assert bc.critical and bc.value.ca and bc.value.path_length == pathlen
        ku = ext(cert, x509.KeyUsage)
        assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
        assert cert.not_valid_after_utc.timestamp() - clock.now == ttl
        ext(cert, x509.SubjectKeyIdentifier)
    assert ca.cert.issuer == ca.root.subject
    aki = ext(ca.cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca.root, x509.SubjectKeyIdentifier).value.digest
    ca.cert.verify_directly_issued_by(ca.root)


def test_files_and_permissions(tmp_path: Path) -> None:
    ca = new_ca(tmp_path)
    assert stat.S_IMODE(ca.dir.stat().st_mode) == 0o700
    for key in ("root-key.pem", "ca-key.pem"):
        assert stat.S_IMODE((ca.dir / key).stat().st_mode) == 0o600


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    ca = new_ca(tmp_path)
    with pytest.raises(PKIError, match="already exists"):
        CertificateAuthority.init(ca.dir, TD)
    again = CertificateAuthority.init(ca.dir, TD, force=True)
    assert again.root.serial_number != ca.root.serial_number


@pytest.mark.parametrize("td", ["", "Example.org", "example.org:443", "spiffe://example.org", "a/b", "ex ample",
                                ".example.org", "example..org"])
def test_invalid_trust_domains(tmp_path: Path, td: str) -> None:
    with pytest.raises(ConfigError, match="trust domain"):
        CertificateAuthority.init(tmp_path / "ca", td)


def test_leaf_is_an_x509_svid(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000)
    ca = CertificateAuthority.init(tmp_path / "ca", TD, clock=clock)
    issued = ca.issue("summarizer", ttl=86400, dns=["summarizer.mesh.svc"])
    leaf = issued.cert
    san = ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}/agent/summarizer"]
    assert san.get_values_for_type(x509.DNSName) == ["summarizer", "summarizer.mesh.svc"]
    bc = ext(leaf, x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ku = ext(leaf, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert not (ku.value.key_cert_sign or ku.value.crl_sign or ku.value.key_encipherment)
    eku = ext(leaf, x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert ext(leaf, x509.SubjectKeyIdentifier).value.digest
    assert ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == \
        ext(ca.cert, x509.SubjectKeyIdentifier).value.digest
    assert leaf.not_valid_before_utc.timestamp() == clock.now - 60
    assert leaf.not_valid_after_utc.timestamp() == clock.now + 86400
    leaf.verify_directly_issued_by(ca.cert)
    assert issued.serial != ca.issue("summarizer").serial  # random serials
    assert issued.serial.bit_length() > 64


def test_leaf_never_outlives_the_issuing_ca(tmp_path: Path) -> None:
    ca = new_ca(tmp_path)
    leaf = ca.issue("a", ttl=5 * YEAR).cert
    assert leaf.not_valid_after_utc <= ca.cert.not_valid_after_utc


@pytest.mark.parametrize("name", ["", "A", "agent_1", "-a", "a-", "a" * 64, "a.b", "../x"])
def test_invalid_agent_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="agent name"):
        new_ca(tmp_path).issue(name)


def test_identity_files(tmp_path: Path) -> None:
    ca = new_ca(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "key.pem").write_text("old")
    (out / "key.pem").chmod(0o644)
    issued = ca.issue("a")
    write_identity(issued, out)
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    chain = x509.load_pem_x509_certificates((out / "cert.pem").read_bytes())
    assert [c.serial_number for c in chain] == [issued.serial, ca.cert.serial_number]
    assert (out / "bundle.pem").read_bytes() == (ca.dir / "root.pem").read_bytes()


def test_index_revocation_and_crl(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000)
    ca = CertificateAuthority.init(tmp_path / "ca", TD, clock=clock)
    a1, b = ca.issue("a"), ca.issue("b")
    clock.advance(10)
    a2 = ca.renew("a")
    assert [e.name for e in ca.entries()] == ["a", "b", "a"]
    def revoked_in_crl() -> set[int]:
        crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
        assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
        return {r.serial_number for r in crl}

    assert a1.serial not in revoked_in_crl()
    revoked = ca.revoke("a")
    assert {e.serial for e in revoked} == {a1.serial, a2.serial}
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.is_signature_valid(ca.cert.public_key())
    assert {r.serial_number for r in crl} == {a1.serial, a2.serial}
    assert a1.serial in revoked_in_crl() and b.serial not in revoked_in_crl()
    ca.revoke(format(b.serial, "x"))
    assert b.serial in revoked_in_crl()
    assert {e.status(clock.now) for e in ca.entries()} == {"revoked"}
    with pytest.raises(PKIError, match="no unrevoked"):
        ca.revoke("a")
    with pytest.raises(PKIError, match="never issued"):
        ca.renew("zed")


def test_crl_signed_by_another_ca_is_refused(tmp_path: Path) -> None:
    """What a member checks a CRL with (agentmesh.trust): a rogue CA's CRL, same names, is refused."""
    from agentmesh.trust import verify_snapshot

    ca = new_ca(tmp_path)
    rogue = CertificateAuthority.init(tmp_path / "rogue", TD)
    with pytest.raises(PKIError, match="not signed"):
        verify_snapshot(crl_pem=rogue.crl_path.read_bytes(), issuers_pem=dump_cert(*rogue.issuers()),
                        trusted_roots=[ca.root], revoked_jtis=(), revoked_members=(), now=time.time())


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="no CA"):
        CertificateAuthority.load(tmp_path / "missing")
    ca = new_ca(tmp_path)
    (ca.dir / "ca-key.pem").write_text("garbage")
    with pytest.raises(PKIError, match="unreadable or damaged"):
        CertificateAuthority.load(ca.dir)
