"""The CRL: built by the CA (pure, :func:`build_crl`), and as seen by a running agent: reloaded when the
file changes, checked per call in O(1)."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from agentmesh.errors import PKIError

__all__ = ["RevocationList", "build_crl", "crl_number", "next_crl_number"]


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


class RevocationList:
    """Revoked serials from a signed CRL file; the file is re-read (at most every ``check_every`` s)
    when its mtime or size changes. A CRL whose signature verifies against no ``issuer`` (one certificate,
    or several: the intermediates of a rotation) is refused and the previous list kept."""

    def __init__(self, path: Path | None,
                 issuer: x509.Certificate | Sequence[x509.Certificate] | None = None, *,
                 check_every: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.issuers: tuple[x509.Certificate, ...] = (
            () if issuer is None else (issuer,) if isinstance(issuer, x509.Certificate) else tuple(issuer))
        self.issuer = self.issuers[0] if self.issuers else None
        self.check_every = check_every
        self.clock = clock
        self._serials: frozenset[int] = frozenset()
        self._stamp: tuple[int, int] | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()
        self.refresh(force=True)

    def refresh(self, *, force: bool = False) -> None:
        if self.path is None:
            return
        now = self.clock()
        if not force and now < self._next_check:
            return
        with self._lock:
            self._next_check = now + self.check_every
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                return
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return
            try:
                crl = x509.load_pem_x509_crl(self.path.read_bytes())
            except (OSError, ValueError):
                return  # a half-written or damaged file: keep the last good list
            if self.issuers and not any(_signed_by(crl, c) for c in self.issuers):
                raise PKIError(f"CRL {self.path} is not signed by the issuing CA")
            self._serials = frozenset(r.serial_number for r in crl)
            self._stamp = stamp

    def is_revoked(self, serial: int) -> bool:
        self.refresh()
        return serial in self._serials


def _signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    pub = issuer.public_key()
    return crl.issuer == issuer.subject and isinstance(pub, ec.EllipticCurvePublicKey) and crl.is_signature_valid(pub)
