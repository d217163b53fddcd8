"""One certificate builder; the CA and leaf profiles differ only in their extensions (side by side below).

Pure: keys, names, times in; a signed certificate out. Also the pure lifetime rules of the CA: the
window of a leaf under its issuer (the cliff), and when an issuer is due for rotation.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agentmesh.errors import ConfigError
from agentmesh.identity import SpiffeId

__all__ = [
    "CertProfile",
    "LeafWindow",
    "PrivateKey",
    "PublicKey",
    "build_certificate",
    "ca_profile",
    "dump_cert",
    "dump_key",
    "issuer_problem",
    "leaf_profile",
    "leaf_window",
    "new_intermediate",
    "new_key",
    "new_root",
    "rotation_due",
    "validate_dns_names",
]

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey
_DNS_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


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


def validate_dns_names(names: Iterable[str]) -> tuple[str, ...]:
    """Host names for DNS SANs (LDH labels, no wildcard, at most 253 characters), lowercased, deduplicated."""
    out: dict[str, None] = {}
    for name in names:
        host = name.lower() if isinstance(name, str) else ""
        if not host or len(host) > 253 or not all(_DNS_LABEL.match(label) for label in host.split(".")):
            raise ConfigError(f"invalid DNS name {str(name)[:80]!r}: use a host name like agent.mesh.svc")
        out[host] = None
    return tuple(out)


def validate_extra_dns_names(names: Iterable[str]) -> tuple[str, ...]:
    """DNS names a member's certificate may carry besides its own name: a member is dialled by its
    name (the one DNS SAN a client checks), so a single-label name, which could be another member's
    (``control``, ``bridge``, any agent), is refused; ``localhost`` and dotted host names are fine."""
    out = validate_dns_names(names)
    for host in out:
        if "." not in host and host != "localhost":
            raise ConfigError(f"extra DNS name {host!r} could be another member's name (members are dialled by "
                              "name): use a dotted host name like agent.mesh.svc, or localhost")
    return out


@dataclass(frozen=True, slots=True)
class LeafWindow:
    """When a leaf issued now is valid; ``capped`` when the issuer's end cut the requested lifetime short."""

    not_before: float
    not_after: float
    capped: bool


def _when(ts: float) -> str:
    return f"{_utc(ts):%Y-%m-%d %H:%M:%S}Z"


def issuer_problem(now: float, not_before: float, not_after: float) -> str | None:
    """Why an issuer cannot sign at ``now`` ("expired on ...", "is not valid until ..."), or None."""
    if now >= not_after:
        return f"expired on {_when(not_after)}"
    if now < not_before:
        return f"is not valid until {_when(not_before)}"
    return None


def leaf_window(now: float, ttl: float, issuer_not_before: float, issuer_not_after: float,
                *, backdate: float = 60.0) -> LeafWindow:
    """The validity of a leaf issued at ``now`` for ``ttl`` seconds, never outside its issuer's.

    The caller refuses first when :func:`issuer_problem` finds the issuer unusable."""
    wanted = now + ttl
    return LeafWindow(max(now - backdate, issuer_not_before), min(wanted, issuer_not_after),
                      wanted > issuer_not_after)


def rotation_due(now: float, not_before: float, not_after: float) -> bool:
    """True once less than a third of a CA certificate's lifetime is left (or it is not usable now)."""
    return not_after - now < (not_after - not_before) / 3 or now < not_before


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
    subject_key: PrivateKey | PublicKey,
    profile: CertProfile,
    not_before: dt.datetime,
    not_after: dt.datetime,
    issuer_cert: x509.Certificate | None,
    issuer_key: PrivateKey,
    serial: int | None = None,
) -> x509.Certificate:
    """Signs a certificate for ``subject_key`` (a private key, or the public key of a CSR);
    ``issuer_cert=None`` makes it self-signed (a root)."""
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "agentmesh"),
        x509.NameAttribute(NameOID.COMMON_NAME, subject_cn),
    ])
    public = subject_key.public_key() if isinstance(subject_key, ec.EllipticCurvePrivateKey) else subject_key
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


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def new_root(trust_domain: str, now: float, *, ttl: float, backdate: float) -> tuple[PrivateKey, x509.Certificate]:
    """A new key and a self-signed root for the trust domain (path length 1)."""
    key = new_key()
    return key, build_certificate(
        subject_cn=f"agentmesh root CA ({trust_domain})", subject_key=key,
        profile=ca_profile(trust_domain, path_length=1),
        not_before=_utc(now - backdate), not_after=_utc(now + ttl), issuer_cert=None, issuer_key=key,
    )


def new_intermediate(trust_domain: str, root: x509.Certificate, root_key: PrivateKey, now: float, *,
                     ttl: float, backdate: float) -> tuple[PrivateKey, x509.Certificate]:
    """A new key and an issuing intermediate under ``root`` (path length 0), never outliving the root."""
    key = new_key()
    return key, build_certificate(
        subject_cn=f"agentmesh issuing CA ({trust_domain})", subject_key=key,
        profile=ca_profile(trust_domain, path_length=0),
        not_before=_utc(now - backdate), not_after=_utc(min(now + ttl, root.not_valid_after_utc.timestamp())),
        issuer_cert=root, issuer_key=root_key,
    )


def dump_cert(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def dump_key(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
