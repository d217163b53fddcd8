"""Whom a member trusts right now: the verified trust snapshot and the revocation verdicts. Pure: no I/O.

The control plane streams full snapshots (``agentmesh.v1.TrustUpdate``), signed by the issuing CA.
:func:`vouched_roots` decides which roots a member may trust from now on (those it trusts, plus new
ones a trusted root cross-signed: a root rollover; a snapshot never anchors itself),
:func:`verify_signature` checks the snapshot's signature against an issuing CA under those roots, and
:func:`verify_snapshot` checks its CRL (signed by such an issuing CA, not past its ``nextUpdate``) and
returns a :class:`TrustSnapshot` whose age is counted from the signature's time. :func:`check_peer` decides for one
peer certificate, given the snapshot, how old it is and the configured :class:`RevocationPolicy`:

=================  =======================  ===========================================
data               failure_mode             peer
=================  =======================  ===========================================
fresh              any                      refused if its serial or its member is revoked
stale / missing    ``open``                 accepted, with a warning (the caller logs it once)
stale / missing    ``closed`` (default)     peers accepted while the data was fresh keep
                                            working; new peers are refused (UNAVAILABLE)
stale / missing    ``strict``               every peer refused (UNAVAILABLE)
=================  =======================  ===========================================

Data is stale when the control plane has not confirmed it for ``max_staleness`` seconds, or when
the CRL is past its ``nextUpdate`` (an expired CRL is never trusted as complete).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agentmesh.errors import ConfigError, PeerIdentityError, PKIError, Unavailable
from agentmesh.identity import PeerIdentity, peer_identity_from_cert

__all__ = [
    "FAILURE_MODES",
    "RevocationPolicy",
    "TrustSnapshot",
    "check_certificate",
    "check_member",
    "check_mtls_peer",
    "check_order",
    "check_peer",
    "revoked_members",
    "staleness",
    "verify_signature",
    "verify_snapshot",
    "vouched_roots",
]

FailureMode = Literal["open", "closed", "strict"]
FAILURE_MODES: tuple[FailureMode, ...] = ("open", "closed", "strict")


@dataclass(frozen=True, slots=True)
class RevocationPolicy:
    max_staleness: float = 120.0
    failure_mode: FailureMode = "closed"

    def __post_init__(self) -> None:
        if self.max_staleness <= 0:
            raise ConfigError("revocation.max_staleness: must be positive")
        if self.failure_mode not in FAILURE_MODES:
            raise ConfigError(f"revocation.failure_mode: expected one of {', '.join(FAILURE_MODES)}, "
                              f"got {self.failure_mode!r}")


@dataclass(frozen=True, slots=True)
class TrustSnapshot:
    """One verified snapshot of the control plane's trust data."""

    revoked_serials: frozenset[int]
    revoked_jtis: frozenset[str]
    revoked_members: frozenset[str]
    crl_next_update: float  # seconds since the epoch
    received_at: float  # when the control plane last confirmed it (local clock)
    generation: int = 0
    bundle: bytes = b""
    jwks_json: str = ""
    issuer: str = ""
    signed_at: float = 0.0  # when the control plane signed it (its clock)
    issuers: tuple[x509.Certificate, ...] = ()  # the issuing intermediates under the trusted roots

    def confirmed(self, at: float) -> TrustSnapshot:
        """The same data, confirmed again at ``at`` (a heartbeat)."""
        return TrustSnapshot(self.revoked_serials, self.revoked_jtis, self.revoked_members, self.crl_next_update,
                             at, self.generation, self.bundle, self.jwks_json, self.issuer, self.signed_at,
                             self.issuers)


def _path_length(cert: x509.Certificate) -> int | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    except x509.ExtensionNotFound:
        return None


def _issuers_under(roots: Sequence[x509.Certificate], issuers: Iterable[x509.Certificate],
                   now: float, *, issuing: bool = True) -> list[x509.Certificate]:
    """The CA certificates that a trusted root signed (CA:TRUE, within validity): issuing intermediates
    (path length 0, what signs leaves, CRLs and snapshots), or with ``issuing=False`` cross certificates of
    roots (path length 1 or more)."""
    out = []
    for cert in issuers:
        length = _path_length(cert)
        if not _is_ca(cert, now) or (length != 0 if issuing else (length is not None and length < 1)):
            continue
        for root in roots:
            try:
                cert.verify_directly_issued_by(root)
            except (ValueError, TypeError, InvalidSignature):
                continue
            out.append(cert)
            break
    return out


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _is_ca(cert: x509.Certificate, now: float) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bool(bc.ca) and cert.not_valid_before_utc.timestamp() <= now <= cert.not_valid_after_utc.timestamp()


def _self_signed(cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def vouched_roots(bundle_pem: bytes, cross_signed_pem: bytes, trusted_roots: Sequence[x509.Certificate],
                  now: float) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """(anchors, bundle): the roots that may verify this snapshot (those already trusted, plus new roots
    of ``bundle_pem`` that a trusted root cross-signed), and the snapshot's bundle, which a member adopts.
    Raises :class:`PKIError` for a bundle holding a root nobody trusted vouches for (a re-initialised CA,
    a forged bundle): trust anchors never come from the snapshot alone."""
    try:
        bundle = x509.load_pem_x509_certificates(bundle_pem) if bundle_pem.strip() else []
        cross = x509.load_pem_x509_certificates(cross_signed_pem) if cross_signed_pem.strip() else []
    except ValueError:
        raise PKIError("the control plane sent an unreadable trust bundle") from None
    trusted = {_spki(r) for r in trusted_roots}
    vouched = {(_spki(c), c.subject) for c in _issuers_under(trusted_roots, cross, now, issuing=False)}
    anchors = list(trusted_roots)
    for root in bundle:
        key = _spki(root)
        if key in trusted:
            continue
        if (key, root.subject) not in vouched or not _is_ca(root, now) or not _self_signed(root):
            raise PKIError("the control plane sent a trust bundle with a root that no root this member trusts "
                           "vouches for (a re-initialised CA needs every member onboarded again)")
        anchors.append(root)
    return anchors, bundle


def verify_signature(content: bytes, signature: bytes, signer_pem: bytes, anchors: Sequence[x509.Certificate],
                     now: float) -> None:
    """Raises :class:`PKIError` unless ``signature`` over ``content`` is by an issuing CA under ``anchors``."""
    try:
        signer = x509.load_pem_x509_certificate(signer_pem)
    except ValueError:
        raise PKIError("the control plane's trust data names no valid signer") from None
    if not _issuers_under(anchors, [signer], now):
        raise PKIError("the control plane's trust data is not signed by an issuing CA of this mesh")
    key = signer.public_key()
    try:
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise InvalidSignature
        key.verify(signature, content, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise PKIError("the control plane's trust data has an invalid signature") from None


def verify_snapshot(*, crl_pem: bytes, issuers_pem: bytes, trusted_roots: Sequence[x509.Certificate],
                    revoked_jtis: Iterable[str], revoked_members: Iterable[str], now: float,
                    generation: int = 0, bundle: bytes = b"", jwks_json: str = "", issuer: str = "",
                    signed_at: float | None = None) -> TrustSnapshot:
    """Checks a snapshot's CRL; raises :class:`PKIError` (one line, no internal paths) when it cannot be
    trusted. Its age counts from ``signed_at`` (never later than ``now``) when given, else from ``now``."""
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
    except ValueError:
        raise PKIError("the control plane sent no valid CRL") from None
    try:
        issuers = x509.load_pem_x509_certificates(issuers_pem) if issuers_pem.strip() else []
    except ValueError:
        raise PKIError("the control plane sent unreadable issuing CA certificates") from None
    issuing = _issuers_under(trusted_roots, issuers, now)
    signers = [c for c in issuing if c.subject == crl.issuer]
    if not any(isinstance(k := c.public_key(), ec.EllipticCurvePublicKey) and crl.is_signature_valid(k)
               for c in signers):
        raise PKIError("the CRL is not signed by an issuing CA of this mesh's trust bundle")
    next_update = crl.next_update_utc
    if next_update is None:
        raise PKIError("the CRL has no nextUpdate; it cannot be trusted as complete")
    nu = next_update.timestamp()
    if now > nu:
        raise PKIError(f"the CRL expired at {dt.datetime.fromtimestamp(nu, dt.UTC):%Y-%m-%d %H:%M:%S}Z")
    received = now if signed_at is None else min(now, signed_at)
    return TrustSnapshot(frozenset(r.serial_number for r in crl), frozenset(revoked_jtis),
                         frozenset(revoked_members), nu, received, generation, bundle, jwks_json, issuer,
                         now if signed_at is None else signed_at, tuple(issuing))


def check_order(current: TrustSnapshot | None, update: TrustSnapshot, now: float, *, skew: float = 300.0) -> None:
    """Refuses trust data older than what a member already holds (a replay could undo revocations) and
    data signed implausibly far in the future (a clock that would make a replay look fresh later)."""
    if update.signed_at > now + skew:
        raise PKIError(f"trust data signed {update.signed_at - now:.0f} s in the future; check the clocks")
    if current is not None and (update.generation < current.generation or update.signed_at < current.signed_at):
        raise PKIError("trust data older than what this member already holds (a replay?) refused")


def staleness(snapshot: TrustSnapshot | None, now: float, policy: RevocationPolicy) -> str | None:
    """Why the revocation data cannot be trusted as complete right now; None when it can."""
    if snapshot is None:
        return "no revocation data from the control plane yet"
    if now > snapshot.crl_next_update:
        return "the CRL is past its nextUpdate"
    age = now - snapshot.received_at
    if age > policy.max_staleness:
        return f"revocation data is {age:.0f} s old (revocation.max_staleness is {policy.max_staleness:.0f} s)"
    return None


def check_certificate(cert: x509.Certificate, issuers: Sequence[x509.Certificate], trust_domain: str,
                      now: float, *, roots: Sequence[x509.Certificate] = (),
                      presented: Sequence[x509.Certificate] = ()) -> PeerIdentity:
    """The identity of a member certificate: issued by one of ``issuers`` (the verified issuing
    intermediates of a snapshot) or by an issuing CA it ``presented`` that one of ``roots`` signed (as in a
    TLS handshake: a member renewed by a newly rotated intermediate before the trust data named it); then
    the same SVID checks as an mTLS peer's.

    "Issued by" means all of: the issuer's subject is the leaf's issuer name, the issuer is a CA within
    its validity, its key signed the leaf, and the leaf's authority key identifier names that key (the
    issuer's subject key identifier). So a leaf signed by any other certificate that a chain builder would
    accept (a CA:TRUE leaf that reuses its issuer's subject, say: "self-issued", it does not count against
    the intermediate's path length) is refused even when TLS verified its chain. For an mTLS peer pass
    the chain it presented as ``presented`` and the trust bundle's roots as ``roots``."""
    for issuer in (*issuers, *_issuers_under(roots, presented, now)):
        if issuer.subject != cert.issuer or not _is_ca(issuer, now):
            continue
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            continue
        if _authority_key_id(cert) != _subject_key_id(issuer):
            continue
        return peer_identity_from_cert(cert, trust_domain, now)
    raise PeerIdentityError("certificate is not issued by an issuing CA of this mesh")


def check_mtls_peer(leaf_pem: bytes, chain_pems: Sequence[bytes], snapshot: TrustSnapshot, trust_domain: str,
                    now: float) -> PeerIdentity:
    """:func:`check_certificate` of an mTLS peer as a gRPC server sees it (the auth context's
    ``x509_pem_cert`` and ``x509_pem_cert_chain``): issued by an issuing CA of ``snapshot``, or by one the peer
    presented that a root of the snapshot's bundle signed. TLS verified the chain; this refuses a chain TLS
    accepts but the mesh never builds (a leaf signed by anything but an issuing CA)."""
    try:
        leaf = x509.load_pem_x509_certificate(leaf_pem)
        presented = x509.load_pem_x509_certificates(b"".join(chain_pems)) if chain_pems else []
        roots = x509.load_pem_x509_certificates(snapshot.bundle) if snapshot.bundle.strip() else []
    except ValueError:
        raise PeerIdentityError("peer certificate chain could not be parsed") from None
    return check_certificate(leaf, snapshot.issuers, trust_domain, now, roots=roots, presented=presented)


def _authority_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def _subject_key_id(cert: x509.Certificate) -> bytes:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def check_member(snapshot: TrustSnapshot | None, name: str | None) -> None:
    """Refuses a member revoked as a whole (kill switch, or every certificate revoked)."""
    if snapshot is not None and name is not None and name in snapshot.revoked_members:
        raise PeerIdentityError(f"mesh member {name} is revoked")


def check_peer(snapshot: TrustSnapshot | None, *, serial: int, name: str | None, spiffe_id: str, known: bool,
               now: float, policy: RevocationPolicy) -> str | None:
    """The revocation verdict for one peer certificate: raises :class:`PeerIdentityError` (revoked) or
    :class:`Unavailable` (cannot tell, fail closed); returns a warning when accepted on stale data."""
    if snapshot is not None:
        if serial in snapshot.revoked_serials:
            raise PeerIdentityError(f"peer certificate of {spiffe_id} is revoked")
        check_member(snapshot, name)
    stale = staleness(snapshot, now, policy)
    if stale is None:
        return None
    if policy.failure_mode == "open" or (policy.failure_mode == "closed" and known):
        return stale
    raise Unavailable(f"cannot check {spiffe_id} for revocation: {stale}")


def revoked_members(entries: Iterable[tuple[str, bool, float]], blocked: Iterable[str], now: float) -> frozenset[str]:
    """Members revoked as a whole: blocked by the kill switch, or holding revoked unexpired certificates
    and no valid one. ``entries`` are (name, revoked, not_after) of every certificate issued."""
    valid: set[str] = set()
    revoked: set[str] = set()
    for name, is_revoked, not_after in entries:
        if not_after > now:
            (revoked if is_revoked else valid).add(name)
    return frozenset(set(blocked) | (revoked - valid))
