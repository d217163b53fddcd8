"""SPIFFE identities: names, trust domains, IDs, and the checks of a peer certificate. Pure: no I/O."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from agentmesh.errors import ConfigError, PeerIdentityError

__all__ = [
    "PeerIdentity",
    "SpiffeId",
    "cert_thumbprint",
    "check_key_strength",
    "check_server_identity",
    "peer_identity_from_cert",
    "peer_identity_from_pem",
    "validate_agent_name",
    "validate_trust_domain",
]

_AGENT_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


def validate_agent_name(name: str) -> str:
    """An agent name: 1-63 lowercase letters, digits and '-', not starting or ending with '-'."""
    if name == "localhost":  # a DNS name every member may carry (the bridge's HTTPS name, say): never a member
        raise ConfigError("invalid agent name 'localhost': it is reserved")
    if not isinstance(name, str) or not _AGENT_NAME.match(name):
        raise ConfigError(
            f"invalid agent name {name!r}: use 1-63 lowercase letters, digits and '-' "
            "(not at the start or end)"
        )
    return name


def validate_trust_domain(td: str) -> str:
    """A SPIFFE trust domain: lowercase letters, digits, '.', '-', '_' (no scheme, port or path)."""
    if not isinstance(td, str) or not _TRUST_DOMAIN.match(td) or td.startswith(".") or td.endswith(".") \
            or ".." in td:
        raise ConfigError(
            f"invalid trust domain {td!r}: use lowercase letters, digits, '.', '-' and '_' "
            "(e.g. example.org), without scheme, port or path"
        )
    return td


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """``spiffe://<trust_domain><path>``; agents are ``spiffe://<td>/agent/<name>``."""

    trust_domain: str
    path: str

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"

    @property
    def uri(self) -> str:
        return str(self)

    @property
    def agent_name(self) -> str | None:
        """The agent name when this is an agent ID, else None."""
        parts = self.path.split("/")
        if len(parts) == 3 and parts[1] == "agent":
            return parts[2]
        return None

    @classmethod
    def for_agent(cls, trust_domain: str, name: str) -> SpiffeId:
        return cls(validate_trust_domain(trust_domain), f"/agent/{validate_agent_name(name)}")

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parses and validates a SPIFFE ID (spec: no query, fragment, port, userinfo, dot segments)."""
        prefix = "spiffe://"
        if not isinstance(uri, str) or not uri.startswith(prefix) or len(uri) > 2048:
            raise ConfigError(f"not a SPIFFE ID: {uri!r}")
        rest = uri[len(prefix):]
        td, sep, path = rest.partition("/")
        validate_trust_domain(td)
        if not sep:
            raise ConfigError(f"SPIFFE ID has no path: {uri!r}")
        segments = path.split("/")
        for seg in segments:
            if not seg or seg in (".", "..") or not _PATH_SEGMENT.match(seg):
                raise ConfigError(f"invalid SPIFFE ID path in {uri!r}")
        return cls(td, "/" + path)


def cert_thumbprint(cert: x509.Certificate) -> str:
    """RFC 8705 ``x5t#S256``: base64url (no padding) SHA-256 of the certificate's DER."""
    der = cert.public_bytes(Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


_STRONG_CURVES = (ec.SECP256R1, ec.SECP384R1)
MIN_RSA_BITS = 2048  # the CA issues EC P-256 only; a CSR may bring P-256 or P-384 (pki/csr.py)


def check_key_strength(cert: x509.Certificate) -> None:
    """Refuses a certificate whose key is weak or of a kind the mesh does not issue: EC P-256/P-384 and
    Ed25519 pass (RSA of at least 2048 bits too, should a CA ever issue RSA)."""
    try:
        key = cert.public_key()
    except ValueError:  # an unsupported or malformed key
        raise PeerIdentityError("peer certificate has an unsupported public key") from None
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _STRONG_CURVES):
        return
    if isinstance(key, ed25519.Ed25519PublicKey):
        return
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS:
        return
    kind = f"EC {key.curve.name}" if isinstance(key, ec.EllipticCurvePublicKey) else \
        f"RSA-{key.key_size}" if isinstance(key, rsa.RSAPublicKey) else type(key).__name__
    raise PeerIdentityError(f"peer certificate key is too weak or not allowed ({kind}); "
                            f"use EC P-256, P-384 or Ed25519")


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is on the other end of a verified mTLS connection."""

    spiffe_id: SpiffeId
    serial: int
    thumbprint: str  # x5t#S256 of the leaf
    not_after: float  # seconds since the epoch
    uri: str = ""  # str(spiffe_id), made once: it is read on every call
    name: str | None = None  # the agent name (None for a non-agent SPIFFE ID), made once too

    def __post_init__(self) -> None:
        if not self.uri:
            object.__setattr__(self, "uri", str(self.spiffe_id))
        object.__setattr__(self, "name", self.spiffe_id.agent_name)


def peer_identity_from_pem(pem: bytes, trust_domain: str, now: float) -> PeerIdentity:
    """:func:`peer_identity_from_cert` of a PEM leaf (as the gRPC auth context gives it)."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise PeerIdentityError("peer certificate could not be parsed") from None
    return peer_identity_from_cert(cert, trust_domain, now)


def peer_identity_from_cert(cert: x509.Certificate, trust_domain: str, now: float) -> PeerIdentity:
    """Checks a peer leaf that TLS already chain-verified, the SPIFFE X509-SVID way.

    Refuses: not exactly one URI SAN, a URI SAN that is not a SPIFFE ID of ``trust_domain``, a CA
    certificate used as a leaf, a leaf without the clientAuth EKU, a weak key (:func:`check_key_strength`),
    and a leaf outside its validity.
    """
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            raise PeerIdentityError("peer presented a CA certificate as its identity")
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise PeerIdentityError("peer certificate has no extended key usage") from None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise PeerIdentityError("peer certificate is not valid for client authentication")
    check_key_strength(cert)
    sid = _spiffe_id(cert, trust_domain)
    nb = cert.not_valid_before_utc.timestamp()
    na = cert.not_valid_after_utc.timestamp()
    if now < nb or now > na:
        raise PeerIdentityError("peer certificate is outside its validity period")
    return PeerIdentity(sid, cert.serial_number, cert_thumbprint(cert), na)



def _spiffe_id(cert: x509.Certificate, trust_domain: str) -> SpiffeId:
    """The one SPIFFE ID (URI SAN) of a certificate, of ``trust_domain``."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PeerIdentityError("peer certificate has no SPIFFE ID") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise PeerIdentityError("peer certificate must carry exactly one URI SAN")
    try:
        sid = SpiffeId.parse(uris[0])
    except ConfigError:
        raise PeerIdentityError("peer certificate URI SAN is not a SPIFFE ID") from None
    if sid.trust_domain != trust_domain:
        raise PeerIdentityError(f"peer belongs to trust domain {sid.trust_domain!r}, not {trust_domain!r}")
    return sid


def check_server_identity(cert: x509.Certificate, name: str, trust_domain: str) -> SpiffeId:
    """Checks that a server leaf (TLS verified its chain and its DNS name) is the agent ``name`` that was
    dialled: its one SPIFFE ID must be ``spiffe://<trust_domain>/agent/<name>``, its key strong. A DNS SAN
    alone is not enough (a member may carry extra DNS names)."""
    sid = _spiffe_id(cert, trust_domain)
    if sid.agent_name != name:
        raise PeerIdentityError(f"the server dialled as agent {name} presents {sid}, not agent {name}")
    check_key_strength(cert)
    return sid
