"""The CRL as seen by a running agent: reloaded when the file changes, checked per call in O(1)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agentmesh.errors import PKIError

__all__ = ["RevocationList"]


class RevocationList:
    """Revoked serials from a signed CRL file; the file is re-read (at most every ``check_every`` s)
    when its mtime or size changes. A CRL whose signature does not verify against ``issuer`` is refused
    and the previous list kept."""

    def __init__(self, path: Path | None, issuer: x509.Certificate | None = None, *,
                 check_every: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.issuer = issuer
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
            if self.issuer is not None:
                pub = self.issuer.public_key()
                if not isinstance(pub, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(pub):
                    raise PKIError(f"CRL {self.path} is not signed by the issuing CA")
            self._serials = frozenset(r.serial_number for r in crl)
            self._stamp = stamp

    def is_revoked(self, serial: int) -> bool:
        self.refresh()
        return serial in self._serials
