"""The CRL, built by the CA (pure). Members receive it in the control plane's signed trust snapshots
and check it there (:mod:`agentmesh.trust`); they never read the CA's file."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from agentmesh.errors import PKIError

__all__ = ["build_crl", "crl_number", "next_crl_number"]


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def crl_number(crl_pem: bytes) -> int | None:
    """The CRLNumber of a PEM CRL, or None when there is none or the file is unreadable."""
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (ValueError, x509.ExtensionNotFound):
        return None


def next_crl_number(previous: int | None, now: float) -> int:
    """Milliseconds since the epoch, but always above the previous number (clock steps, same millisecond)."""
    return max(int(now * 1000), (previous or 0) + 1)


def build_crl(issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey, revoked: Iterable[tuple[int, float]],
              *, now: float, validity: float, number: int, backdate: float = 60.0) -> x509.CertificateRevocationList:
    """A CRL signed by ``issuer`` listing ``(serial, revoked_at)``; nextUpdate is ``now + validity``."""
    if validity <= 0:
        raise PKIError("CRL validity must be positive")
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(_utc(now - backdate))
        .next_update(_utc(now + validity))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
    )
    for serial, at in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(_utc(at)).build()
        )
    return b.sign(key, hashes.SHA256())
