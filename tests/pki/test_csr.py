"""check_csr: the good CSR passes; every request for more than one exact SPIFFE ID, or without proof of
possession, or with a weak key, FAILS with a one-line message naming the rule."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from support import TD

from agentmesh.errors import PKIError
from agentmesh.identity import SpiffeId
from agentmesh.pki.csr import MAX_CSR_PEM, check_csr, make_csr

ME = SpiffeId.for_agent(TD, "alpha")
P256 = ec.generate_private_key(ec.SECP256R1())


def pem_of(der: bytes) -> bytes:
    return x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)


def csr(
    names: Sequence[x509.GeneralName] | None = (x509.UniformResourceIdentifier(str(ME)),),
    *,
    key: object = P256,
    extra: Sequence[x509.ExtensionType] = (),
    algorithm: hashes.HashAlgorithm | None = None,
) -> bytes:
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "alpha")]))
    if names is not None:
        b = b.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    for ext in extra:
        b = b.add_extension(ext, critical=True)
    if algorithm is None and not isinstance(key, ed25519.Ed25519PrivateKey):
        algorithm = hashes.SHA256()
    return b.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def tampered_signature() -> bytes:
    der = bytearray(x509.load_pem_x509_csr(make_csr(P256, ME)).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the ECDSA signature's s
    return pem_of(bytes(der))


def uri(u: str) -> x509.GeneralName:
    return x509.UniformResourceIdentifier(u)


ATTACKS: list[tuple[str, Callable[[], object], str]] = [
    ("not bytes", lambda: make_csr(P256, ME).decode(), "not a PEM CSR"),
    ("empty", lambda: b"", "not a PEM certificate signing request"),
    ("garbage", lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
     "not a parseable"),
    ("DER, not PEM", lambda: x509.load_pem_x509_csr(make_csr(P256, ME)).public_bytes(serialization.Encoding.DER),
     "not a PEM certificate signing request"),
    ("two CSRs", lambda: make_csr(P256, ME) + csr([uri(f"spiffe://{TD}/agent/admin")]), "exactly one"),
    ("oversized", lambda: make_csr(P256, ME) + b"\n" * MAX_CSR_PEM, "16 KiB"),
    ("signature does not verify", tampered_signature, "signature does not verify"),
    ("RSA key", lambda: csr(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)), "EC P-256 or P-384"),
    ("Ed25519 key", lambda: csr(key=ed25519.Ed25519PrivateKey.generate()), "EC P-256 or P-384"),
    ("P-224 key", lambda: csr(key=ec.generate_private_key(ec.SECP224R1())), "EC P-256 or P-384"),
    ("secp256k1 key", lambda: csr(key=ec.generate_private_key(ec.SECP256K1())), "EC P-256 or P-384"),
    ("SHA-224 signature", lambda: csr(algorithm=hashes.SHA224()), "signature hash"),
    ("no SAN", lambda: csr(None), "no SubjectAlternativeName"),
    ("empty-ish SAN: DNS only", lambda: csr([x509.DNSName("alpha")]), "exactly one URI"),
    ("another member", lambda: csr([uri(f"spiffe://{TD}/agent/admin")]), "asks for 'spiffe://example.org/agent/admin'"),
    ("another trust domain", lambda: csr([uri("spiffe://evil.org/agent/alpha")]), "not spiffe://example.org"),
    ("non-SPIFFE URI", lambda: csr([uri(f"https://{TD}/agent/alpha")]), "not spiffe://"),
    ("prefix trick", lambda: csr([uri(f"{ME}/x")]), "not spiffe://"),
    ("two URIs (mine first)", lambda: csr([uri(str(ME)), uri(f"spiffe://{TD}/agent/admin")]), "exactly one URI"),
    ("URI + DNS", lambda: csr([uri(str(ME)), x509.DNSName("bank.example.com")]), "DNS names are the CA's"),
    ("URI + IP", lambda: csr([uri(str(ME)), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]), "exactly one URI"),
    ("URI + email", lambda: csr([uri(str(ME)), x509.RFC822Name("a@example.org")]), "exactly one URI"),
    ("asks to be a CA", lambda: csr(extra=[x509.BasicConstraints(ca=True, path_length=None)]), "CA certificate"),
    ("BasicConstraints even CA=false", lambda: csr(extra=[x509.BasicConstraints(ca=False, path_length=None)]),
     "2.5.29.19 is not allowed"),
    ("key usage", lambda: csr(extra=[x509.KeyUsage(True, False, False, False, False, True, True, False, False)]),
     "is not allowed"),
    ("extended key usage", lambda: csr(extra=[x509.ExtendedKeyUsage([x509.OID_CODE_SIGNING])]), "is not allowed"),
]


@pytest.mark.parametrize(("case", "make", "rule"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_every_attack_fails(case: str, make: Callable[[], object], rule: str) -> None:
    with pytest.raises(PKIError, match="certificate signing request refused") as err:
        check_csr(make(), ME)  # type: ignore[arg-type]
    assert rule in err.value.message
    assert "\n" not in err.value.message


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()], ids=["P-256", "P-384"])
def test_the_good_csr_passes(curve: ec.EllipticCurve) -> None:
    key = ec.generate_private_key(curve)
    pem = make_csr(key, ME)
    public = check_csr(pem, ME)
    assert public.public_numbers() == key.public_key().public_numbers()
    request = x509.load_pem_x509_csr(pem)
    assert [type(e.value) for e in request.extensions] == [x509.SubjectAlternativeName]
    san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(ME)]
    assert list(san) == [x509.UniformResourceIdentifier(str(ME))]


def test_a_good_csr_for_someone_else_fails() -> None:
    with pytest.raises(PKIError, match=re.escape("not spiffe://example.org/agent/beta")):
        check_csr(make_csr(P256, ME), SpiffeId.for_agent(TD, "beta"))


def test_message_never_echoes_a_long_attacker_string() -> None:
    long_uri = f"spiffe://{TD}/agent/" + "x" * 1000
    with pytest.raises(PKIError) as err:
        check_csr(csr([uri(long_uri)]), ME)
    assert len(err.value.message) < 300
