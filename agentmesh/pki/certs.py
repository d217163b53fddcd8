"""One certificate builder; the CA and leaf profiles differ only in their extensions (side by side below).

Pure: keys, names, times in; a signed certificate out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agentmesh.identity import SpiffeId

__all__ = [
    "CertProfile",
    "build_certificate",
    "ca_profile",
    "dump_cert",
    "dump_key",
    "leaf_profile",
    "new_key",
]

PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class CertProfile:
    """What makes a certificate a CA or a leaf: nothing but its extensions."""

    is_ca: bool
    path_length: int | None
    key_usage: frozenset[str]
    eku: tuple[x509.ObjectIdentifier, ...]
    uris: tuple[str, ...]
    dns: tuple[str, ...]


def ca_profile(trust_domain: str, *, path_length: int) -> CertProfile:
    return CertProfile(
        is_ca=True,
        path_length=path_length,
        key_usage=frozenset({"key_cert_sign", "crl_sign"}),
        eku=(),
        uris=(f"spiffe://{trust_domain}",),
        dns=(),
    )


def leaf_profile(
    spiffe_id: SpiffeId,
    dns: Sequence[str] = (),
    *,
    eku: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    is_ca: bool = False,
) -> CertProfile:
    """An X509-SVID: exactly one URI SAN, DNS SANs, CA=false, digitalSignature, server+client auth."""
    return CertProfile(
        is_ca=is_ca,
        path_length=None,
        key_usage=frozenset({"digital_signature"}),
        eku=eku,
        uris=(str(spiffe_id),),
        dns=tuple(dict.fromkeys(dns)),
    )


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_usage(flags: frozenset[str]) -> x509.KeyUsage:
    names = (
        "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
        "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
    )
    return x509.KeyUsage(**{n: n in flags for n in names})


def build_certificate(
    *,
    subject_cn: str,
    subject_key: PrivateKey,
    profile: CertProfile,
    not_before: dt.datetime,
    not_after: dt.datetime,
    issuer_cert: x509.Certificate | None,
    issuer_key: PrivateKey,
    serial: int | None = None,
) -> x509.Certificate:
    """Signs a certificate; ``issuer_cert=None`` makes it self-signed (a root)."""
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "agentmesh"),
        x509.NameAttribute(NameOID.COMMON_NAME, subject_cn),
    ])
    public = subject_key.public_key()
    issuer_name = issuer_cert.subject if issuer_cert is not None else subject
    issuer_public = issuer_key.public_key()
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=profile.is_ca, path_length=profile.path_length), critical=True)
        .add_extension(_key_usage(profile.key_usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False)
    )
    if profile.eku:
        b = b.add_extension(x509.ExtendedKeyUsage(list(profile.eku)), critical=False)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in profile.uris]
    sans += [x509.DNSName(d) for d in profile.dns]
    if sans:
        # SPIFFE: the SAN is critical when the subject is empty; ours is not, so non-critical is fine.
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def dump_cert(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def dump_key(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
