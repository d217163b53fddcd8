"""Whom a member trusts right now: the verified trust snapshot and the revocation verdicts. Pure: no I/O.

The control plane streams full snapshots (``agentmesh.v1.TrustUpdate``). :func:`verify_snapshot`
checks one (the CRL must be signed by an issuing CA that chains to a trusted root and must not be
past its ``nextUpdate``) and returns a :class:`TrustSnapshot`. :func:`check_peer` decides for one
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
from cryptography.hazmat.primitives.asymmetric import ec

from agentmesh.errors import ConfigError, PeerIdentityError, PKIError, Unavailable

__all__ = [
    "FAILURE_MODES",
    "RevocationPolicy",
    "TrustSnapshot",
    "check_member",
    "check_peer",
    "revoked_members",
    "staleness",
    "verify_snapshot",
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

    def confirmed(self, at: float) -> TrustSnapshot:
        """The same data, confirmed again at ``at`` (a heartbeat)."""
        return TrustSnapshot(self.revoked_serials, self.revoked_jtis, self.revoked_members, self.crl_next_update,
                             at, self.generation, self.bundle, self.jwks_json, self.issuer)


def _issuers_under(roots: Sequence[x509.Certificate], issuers: Iterable[x509.Certificate],
                   now: float) -> list[x509.Certificate]:
    """The issuing CAs that a trusted root signed (CA:TRUE, within validity)."""
    out = []
    for cert in issuers:
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            continue
        if not bc.ca or not cert.not_valid_before_utc.timestamp() <= now <= cert.not_valid_after_utc.timestamp():
            continue
        for root in roots:
            try:
                cert.verify_directly_issued_by(root)
            except (ValueError, TypeError, x509.InvalidSignature):
                continue
            out.append(cert)
            break
    return out


def verify_snapshot(*, crl_pem: bytes, issuers_pem: bytes, trusted_roots: Sequence[x509.Certificate],
                    revoked_jtis: Iterable[str], revoked_members: Iterable[str], now: float,
                    generation: int = 0, bundle: bytes = b"", jwks_json: str = "", issuer: str = "") -> TrustSnapshot:
    """Checks a snapshot; raises :class:`PKIError` (one line, no internal paths) when it cannot be trusted."""
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
    except ValueError:
        raise PKIError("the control plane sent no valid CRL") from None
    try:
        issuers = x509.load_pem_x509_certificates(issuers_pem) if issuers_pem.strip() else []
    except ValueError:
        raise PKIError("the control plane sent unreadable issuing CA certificates") from None
    signers = [c for c in _issuers_under(trusted_roots, issuers, now) if c.subject == crl.issuer]
    if not any(isinstance(k := c.public_key(), ec.EllipticCurvePublicKey) and crl.is_signature_valid(k)
               for c in signers):
        raise PKIError("the CRL is not signed by an issuing CA of this mesh's trust bundle")
    next_update = crl.next_update_utc
    if next_update is None:
        raise PKIError("the CRL has no nextUpdate; it cannot be trusted as complete")
    nu = next_update.timestamp()
    if now > nu:
        raise PKIError(f"the CRL expired at {dt.datetime.fromtimestamp(nu, dt.UTC):%Y-%m-%d %H:%M:%S}Z")
    return TrustSnapshot(frozenset(r.serial_number for r in crl), frozenset(revoked_jtis),
                         frozenset(revoked_members), nu, now, generation, bundle, jwks_json, issuer)


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
