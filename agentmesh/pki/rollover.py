"""The CA's own certificates over time: rotating the issuing intermediate, and rolling the root over in
three steps (the new root, cross-signed by the old, joins the bundle; then it issues; then the old root
leaves the bundle once nothing valid chains to it). A part of :class:`agentmesh.pki.ca.CertificateAuthority`,
kept apart because it is a concern of its own; it relies on the CA's lock, index and files."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agentmesh.errors import PKIError
from agentmesh.pki.certs import (
    PrivateKey,
    build_certificate,
    ca_profile,
    dump_cert,
    dump_key,
    issuer_problem,
    new_intermediate,
    new_root,
)
from agentmesh.pki.index import Index
from agentmesh.pki.store import public_der, replace_private, stamp, write_public

__all__ = ["BACKDATE", "INTERMEDIATE_TTL", "ROOT_TTL", "Rollover"]

ROOT_TTL = 10 * 365 * 86400
INTERMEDIATE_TTL = 365 * 86400
BACKDATE = 60


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


class Rollover:
    """Rotation and rollover, mixed into the CA (which provides what is declared here)."""

    dir: Path
    trust_domain: str
    root: x509.Certificate
    cert: x509.Certificate
    key: PrivateKey
    bundle: bytes
    clock: Callable[[], float]
    _stamp: tuple[tuple[int, int, int], ...]

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def _state(self) -> Index:
        raise NotImplementedError

    def _append(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def refresh(self) -> bool:
        raise NotImplementedError

    def write_crl(self, *, validity: float = 86400.0) -> Path:
        raise NotImplementedError

    def _root_key(self) -> PrivateKey:
        try:
            key = serialization.load_pem_private_key((self.dir / "root-key.pem").read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as e:
            raise PKIError(f"the root key in {self.dir} is unreadable ({e.__class__.__name__})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or \
                public_der(key.public_key()) != public_der(self.root.public_key()):
            raise PKIError(f"root-key.pem in {self.dir} does not match root.pem")
        return key

    def _archive(self, folder: str, cert: x509.Certificate) -> None:
        (self.dir / folder).mkdir(mode=0o700, exist_ok=True)
        write_public(self.dir / folder / f"{cert.serial_number:x}.pem", dump_cert(cert))

    def _install(self, root: x509.Certificate, root_key: PrivateKey | None, cert: x509.Certificate,
                 key: PrivateKey, bundle: bytes) -> None:
        """Replaces the CA files, keys first (0600, atomic), then re-signs the CRL with the new intermediate."""
        if root_key is not None:
            replace_private(self.dir / "root-key.pem", dump_key(root_key))
            write_public(self.dir / "root.pem", dump_cert(root))
        replace_private(self.dir / "ca-key.pem", dump_key(key))
        write_public(self.dir / "ca.pem", dump_cert(cert))
        write_public(self.dir / "bundle.pem", bundle)
        self.root, self.cert, self.key, self.bundle = root, cert, key, bundle
        self._stamp = stamp(self.dir)
        self.write_crl()

    def rotate(self, *, ttl: float = INTERMEDIATE_TTL) -> x509.Certificate:
        """A new issuing intermediate (new key) under the same root; the old certificate goes to issuers/."""
        if ttl <= 0:
            raise PKIError("intermediate lifetime must be positive")
        with self._locked():
            now = self.clock()
            problem = issuer_problem(now, self.root.not_valid_before_utc.timestamp(),
                                     self.root.not_valid_after_utc.timestamp())
            if problem is not None:
                raise PKIError(f"the root CA {problem}; roll it over with: agentmesh ca rollover --ca {self.dir}")
            old = self.cert
            key, cert = new_intermediate(self.trust_domain, self.root, self._root_key(), now, ttl=ttl,
                                         backdate=BACKDATE)
            self._archive("issuers", old)
            self._install(self.root, None, cert, key, self.bundle)
            self._append({"op": "rotate", "old": format(old.serial_number, "x"),
                          "new": format(cert.serial_number, "x"), "at": now})
            return cert

    def issuers(self) -> tuple[x509.Certificate, ...]:
        """The current intermediate, then the archived ones not yet expired (they may have signed live leaves)."""
        self.refresh()
        now = self.clock()
        archived = []
        for path in sorted((self.dir / "issuers").glob("*.pem")):
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except (OSError, ValueError):
                continue
            if cert.not_valid_after_utc.timestamp() > now and cert.serial_number != self.cert.serial_number:
                archived.append(cert)
        archived.sort(key=lambda c: c.not_valid_after_utc, reverse=True)
        return (self.cert, *archived)

    def cross_signed(self) -> tuple[x509.Certificate, ...]:
        """Roots of the bundle certified by an earlier root (made by :meth:`rollover`), for members that
        trust only the earlier one yet."""
        self.refresh()
        out = []
        in_bundle = {r.serial_number for r in self.bundle_roots()}
        for path in sorted((self.dir / "roots").glob("cross-*.pem")):
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except (OSError, ValueError):
                continue
            if int(path.stem.removeprefix("cross-"), 16) in in_bundle:
                out.append(cert)
        return tuple(out)

    def bundle_roots(self) -> tuple[x509.Certificate, ...]:
        """The roots of bundle.pem (two during a rollover)."""
        return tuple(x509.load_pem_x509_certificates(self.bundle))

    def rollover(self) -> x509.Certificate:
        """Starts a root rollover: a new root (cross-signed by the current one, so members may adopt it)
        and a new intermediate under it, kept in ``next/``; bundle.pem holds the old and the new root. The
        CA keeps issuing from the current intermediate until :meth:`activate_rollover`, so no member is
        handed a certificate its peers cannot verify yet. Returns the new root."""
        with self._locked():
            if len(self.bundle_roots()) > 1 or (self.dir / "next").exists():
                raise PKIError(f"a root rollover is already under way; finish it first with: "
                               f"agentmesh ca rollover --ca {self.dir} --finish")
            now = self.clock()
            old_root = self.root
            root_key, root = new_root(self.trust_domain, now, ttl=ROOT_TTL, backdate=BACKDATE)
            key, cert = new_intermediate(self.trust_domain, root, root_key, now, ttl=INTERMEDIATE_TTL,
                                         backdate=BACKDATE)
            # the old root vouches for the new one: members add a root to their bundle only this way
            cross = build_certificate(
                subject_cn=f"agentmesh root CA ({self.trust_domain})", subject_key=root_key.public_key(),
                profile=ca_profile(self.trust_domain, path_length=1), not_before=_utc(now - BACKDATE),
                not_after=min(root.not_valid_after_utc, old_root.not_valid_after_utc),
                issuer_cert=old_root, issuer_key=self._root_key())
            (self.dir / "roots").mkdir(mode=0o700, exist_ok=True)
            write_public(self.dir / "roots" / f"cross-{root.serial_number:x}.pem", dump_cert(cross))
            pending = self.dir / "next"
            pending.mkdir(mode=0o700)
            replace_private(pending / "root-key.pem", dump_key(root_key))
            replace_private(pending / "ca-key.pem", dump_key(key))
            write_public(pending / "root.pem", dump_cert(root))
            write_public(pending / "ca.pem", dump_cert(cert))
            self.bundle = dump_cert(old_root, root)
            write_public(self.dir / "bundle.pem", self.bundle)
            self._stamp = stamp(self.dir)
            self._append({"op": "rollover", "old_root": format(old_root.serial_number, "x"),
                          "new_root": format(root.serial_number, "x"), "new": format(cert.serial_number, "x"),
                          "at": now})
            return root

    def rollover_started(self) -> float | None:
        """When the pending rollover's new root entered the bundle (None: none is pending)."""
        try:
            return (self.dir / "next" / "ca.pem").stat().st_mtime
        except FileNotFoundError:
            return None

    def activate_rollover(self) -> x509.Certificate:
        """Issues from the new root's intermediate from now on (once members trust the new root: the
        control plane does this by itself shortly after :meth:`rollover`); returns that intermediate."""
        with self._locked():
            pending = self.dir / "next"
            if not pending.exists():
                raise PKIError(f"no root rollover is pending in {self.dir}")
            try:
                root = x509.load_pem_x509_certificate((pending / "root.pem").read_bytes())
                cert = x509.load_pem_x509_certificate((pending / "ca.pem").read_bytes())
                root_key = serialization.load_pem_private_key((pending / "root-key.pem").read_bytes(), None)
                key = serialization.load_pem_private_key((pending / "ca-key.pem").read_bytes(), None)
            except (OSError, ValueError, TypeError) as e:
                raise PKIError(f"the pending rollover in {pending} is damaged ({e.__class__.__name__})") from None
            assert isinstance(root_key, ec.EllipticCurvePrivateKey) and isinstance(key, ec.EllipticCurvePrivateKey)
            self._archive("roots", self.root)
            self._archive("issuers", self.cert)
            self._install(root, root_key, cert, key, self.bundle)
            for name in ("root.pem", "ca.pem", "root-key.pem", "ca-key.pem"):
                (pending / name).unlink()
            pending.rmdir()
            self._append({"op": "rollover_activate", "new": format(cert.serial_number, "x"), "at": self.clock()})
            return cert

    def finish_rollover(self) -> tuple[x509.Certificate, ...]:
        """Rewrites bundle.pem with the current root only; returns the roots it dropped (none: nothing to do)."""
        with self._locked():
            if (self.dir / "next").exists():
                raise PKIError("the new root does not issue yet: the control plane switches to it shortly after "
                               f"'ca rollover' (or run: agentmesh ca rollover --ca {self.dir} --activate)")
            dropped = tuple(r for r in self.bundle_roots() if r.serial_number != self.root.serial_number)
            now = self.clock()
            state = self._state()
            waiting = [state.entries[n] for n in state.under_old_root
                       if state.entries[n].revoked_at is None and state.entries[n].not_after > now]
            if dropped and waiting:
                last = max(e.not_after for e in waiting)
                raise PKIError(f"{len(waiting)} certificate(s) issued under the old root are still valid (the last "
                               f"until {_utc(last):%Y-%m-%d %H:%M:%S}Z; members renew at half their lifetime): "
                               "dropping it now would cut them off; run --finish once they have renewed")
            if dropped:
                self.bundle = dump_cert(self.root)
                write_public(self.dir / "bundle.pem", self.bundle)
                self._stamp = stamp(self.dir)
                self._append({"op": "finish_rollover", "dropped": [format(r.serial_number, "x") for r in dropped],
                              "at": self.clock()})
            return dropped
