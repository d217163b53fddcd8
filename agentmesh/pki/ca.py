"""The mini CA: a root and an issuing intermediate in one directory, an append-only index, a CRL.

Directory layout (0700; keys and the index 0600)::

    ca.json                 trust domain and format version
    root.pem  root-key.pem  self-signed root (ECDSA P-256, 10 years)
    ca.pem    ca-key.pem    issuing intermediate (1 year), signs leaves and the CRL
    bundle.pem              the trust bundle: the root, or old + new root during a rollover
    index.jsonl             one line per event: issue, revoke, block, unblock, rotate, rollover (append-only)
    crl.pem                 the signed CRL of revoked leaves
    issuers/<serial>.pem    intermediates replaced by ``rotate`` (certificates only; their keys are gone)
    roots/<serial>.pem      roots replaced by ``rollover``
    join-tokens.jsonl       one-time join tokens (agentmesh.pki.join)

Every writer holds ``.lock`` (flock) and first re-reads the CA files if another process rotated them.
The index lives in :mod:`agentmesh.pki.index`, the directory's files in :mod:`agentmesh.pki.store`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agentmesh.errors import PKIError
from agentmesh.identity import SpiffeId, validate_agent_name, validate_trust_domain
from agentmesh.pki.certs import (
    PrivateKey,
    PublicKey,
    build_certificate,
    dump_cert,
    dump_key,
    issuer_problem,
    leaf_profile,
    leaf_window,
    new_intermediate,
    new_key,
    new_root,
    rotation_due,
    validate_dns_names,
    validate_extra_dns_names,
)
from agentmesh.pki.crl import build_crl, crl_number, next_crl_number
from agentmesh.pki.csr import check_csr
from agentmesh.pki.index import BlockEntry, Index, IndexEntry, note
from agentmesh.pki.issued import IssuedCert, write_identity
from agentmesh.pki.rollover import BACKDATE, INTERMEDIATE_TTL, ROOT_TTL, Rollover
from agentmesh.pki.store import read_files, replace_private, stamp, write_private, write_public

__all__ = [
    "BlockEntry",
    "CertificateAuthority",
    "IndexEntry",
    "IssuedCert",
    "MemberBlocked",
    "write_identity",
    "write_private",
]

Clock = Callable[[], float]
DEFAULT_LEAF_TTL = 24 * 3600


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


class MemberBlocked(PKIError):
    """The CA refuses to issue to a blocked member; ``name`` and ``reason`` let a caller reword the hint."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"agent {name} is revoked ({reason or 'no reason given'}); "
                         f"reinstate it with: agentmesh reinstate {name} --config FILE")
        self.name = name
        self.reason = reason


class CertificateAuthority(Rollover):
    """A loaded CA directory. Create one with :meth:`init`, open one with :meth:`load`."""

    def __init__(self, directory: Path, trust_domain: str, root: x509.Certificate, cert: x509.Certificate,
                 key: PrivateKey, clock: Clock = time.time, *, bundle: bytes | None = None) -> None:
        self.dir = directory
        self.trust_domain = trust_domain
        self.root = root
        self.cert = cert
        self.key = key
        self.clock = clock
        self.bundle = bundle if bundle is not None else dump_cert(root)
        self._dirname = str(directory)
        self._stamp = stamp(directory)
        self._index = Index()
        self._mutex = threading.RLock()
        self._depth = 0
        self._synced = False

    # ------------------------------------------------------------------ create / open
    @classmethod
    def init(cls, directory: str | Path, trust_domain: str, *, force: bool = False,
             clock: Clock = time.time) -> CertificateAuthority:
        d = Path(directory)
        validate_trust_domain(trust_domain)
        if (d / "ca.json").exists() and not force:
            raise PKIError(f"a CA already exists in {d} (use --force to replace it)")
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(d, 0o700)
        now = clock()
        root_key, root = new_root(trust_domain, now, ttl=ROOT_TTL, backdate=BACKDATE)
        inter_key, inter = new_intermediate(trust_domain, root, root_key, now, ttl=INTERMEDIATE_TTL,
                                                  backdate=BACKDATE)
        replace_private(d / "root-key.pem", dump_key(root_key))
        replace_private(d / "ca-key.pem", dump_key(inter_key))
        write_public(d / "root.pem", dump_cert(root))
        write_public(d / "ca.pem", dump_cert(inter))
        write_public(d / "bundle.pem", dump_cert(root))
        replace_private(d / "index.jsonl", b"")
        write_public(d / "ca.json", json.dumps({"version": 1, "trust_domain": trust_domain}).encode())
        ca = cls(d, trust_domain, root, inter, inter_key, clock)
        ca.write_crl()
        return ca

    @classmethod
    def load(cls, directory: str | Path, *, clock: Clock = time.time) -> CertificateAuthority:
        d = Path(directory)
        meta = d / "ca.json"
        if not meta.exists():
            raise PKIError(f"no CA in {d} (create one with: agentmesh ca init --dir {d} --trust-domain ...)")
        try:
            td = json.loads(meta.read_text())["trust_domain"]
        except PermissionError as e:
            raise PKIError(f"cannot read the CA in {d}: permission denied ({Path(e.filename).name})") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PKIError(f"the CA in {d} is unreadable or damaged ({e.__class__.__name__})") from None
        f = read_files(d)
        ca = cls(d, td, f.root, f.cert, f.key, clock, bundle=f.bundle)
        ca._stamp = f.stamp
        return ca

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The CA lock (flock on ``.lock``), re-entrant within this object, then the files as on disk."""
        with self._mutex:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            with open(os.path.join(self._dirname, ".lock"), "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                self._depth = 1
                try:
                    self._synced = self._sync()
                    yield
                finally:
                    self._depth = 0
                    fcntl.flock(f, fcntl.LOCK_UN)

    def _sync(self) -> bool:
        """Re-reads the CA files when another process rotated or rolled them over since we read them."""
        if stamp(self._dirname) == self._stamp:
            return False
        f = read_files(self.dir)
        self.root, self.cert, self.key, self.bundle, self._stamp = f.root, f.cert, f.key, f.bundle, f.stamp
        return True

    def refresh(self) -> bool:
        """Picks up a rotation, rollover or bundle change made by another process; True when one was found.

        Every writing method does this first; long-lived readers of ``cert``/``bundle`` call it."""
        with self._mutex:
            if self._depth:
                return False
            with self._locked():
                return self._synced

    # ------------------------------------------------------------------ issuing
    def issue(
        self,
        name: str,
        *,
        ttl: float = DEFAULT_LEAF_TTL,
        dns: Sequence[str] = (),
        record: bool = True,
        key: PrivateKey | None = None,
    ) -> IssuedCert:
        """Issues an X509-SVID for agent ``name`` with a new key (or ``key``)."""
        validate_agent_name(name)
        leaf_key = key or new_key()
        return self._issue(name, leaf_key.public_key(), leaf_key, ttl=ttl, dns=dns, record=record)

    def issue_csr(self, name: str, csr_pem: bytes, *, ttl: float = DEFAULT_LEAF_TTL,
                  dns: Sequence[str] = (), renewing: int | None = None) -> IssuedCert:
        """Issues an X509-SVID for the key of a CSR that asks for exactly the SPIFFE ID of ``name``.

        ``renewing``: the serial of the certificate whose holder asks (a renewal). It must be ``name``'s and
        unrevoked in the index at this very moment (under the CA lock, not as of some snapshot), and the
        new certificate records it, so revoking that serial later revokes what it renewed into too."""
        sid = SpiffeId.for_agent(self.trust_domain, name)
        return self._issue(name, check_csr(csr_pem, sid), None, ttl=ttl, dns=dns, record=True, renewing=renewing)

    def _issue(self, name: str, public: PublicKey, key: PrivateKey | None, *, ttl: float,
               dns: Sequence[str], record: bool, renewing: int | None = None) -> IssuedCert:
        """The one issuing path: refuses a blocked name, a revoked renewing certificate and an unusable
        issuer; caps at the issuer's end."""
        if ttl <= 0:
            raise PKIError("certificate lifetime must be positive")
        sid = SpiffeId.for_agent(self.trust_domain, name)
        names = validate_dns_names((name, *validate_extra_dns_names(d for d in dns if d != name)))
        with self._locked():
            state = self._state()
            if (block := state.blocked.get(name)) is not None:
                raise MemberBlocked(name, block.reason)
            if renewing is not None:
                held = state.entries.get(renewing)
                if held is None or held.name != name or held.revoked_at is not None:
                    raise PKIError(f"certificate {renewing:x} is revoked or not {name}'s; it cannot be renewed")
                # one successor per certificate: renewing it again (a retry, or a thief holding a copy of its
                # key) revokes the earlier successor, so a fork cannot go unnoticed
                for e in list(state.entries.values()):
                    if e.renewed_from == renewing and e.revoked_at is None:
                        self._append({"op": "revoke", "serial": format(e.serial, "x"), "at": self.clock(),
                                      "reason": f"superseded: {renewing:x} was renewed again", "by": "control"})
                        self.write_crl()
            now = self.clock()
            self._check_issuer(now)
            window = leaf_window(now, ttl, self.cert.not_valid_before_utc.timestamp(),
                                 self.cert.not_valid_after_utc.timestamp(), backdate=BACKDATE)
            cert = build_certificate(
                subject_cn=name, subject_key=public, profile=leaf_profile(sid, names),
                not_before=_utc(window.not_before), not_after=_utc(window.not_after),
                issuer_cert=self.cert, issuer_key=self.key,
            )
            if record:
                event: dict[str, Any] = {"op": "issue", "name": name, "serial": format(cert.serial_number, "x"),
                                         "spiffe_id": str(sid), "not_after": window.not_after, "dns": list(names)}
                if renewing is not None:
                    event["renewed_from"] = format(renewing, "x")
                self._append(event)
            return IssuedCert(name, sid, cert, key, (self.cert,), self.bundle, window.capped)

    def _check_issuer(self, now: float) -> None:
        problem = issuer_problem(now, self.cert.not_valid_before_utc.timestamp(),
                                 self.cert.not_valid_after_utc.timestamp())
        if problem is not None:
            hint = "check this machine's clock, or rotate it with" if problem.startswith("is not") else "rotate it with"
            raise PKIError(f"the issuing CA {problem}; {hint}: agentmesh ca rotate --ca {self.dir}")

    def renew(self, name: str, *, ttl: float = DEFAULT_LEAF_TTL, dns: Sequence[str] = ()) -> IssuedCert:
        """A fresh key and certificate for an agent the CA already issued to."""
        if (block := self.blocked().get(name)) is not None:
            raise MemberBlocked(name, block.reason)
        if self.latest(name) is None:
            raise PKIError(f"the CA never issued a certificate to {name!r}; use 'cert issue'")
        return self.issue(name, ttl=ttl, dns=dns)

    def needs_rotation(self, now: float | None = None) -> bool:
        """True once less than a third of the issuing intermediate's lifetime is left."""
        return rotation_due(self.clock() if now is None else now, self.cert.not_valid_before_utc.timestamp(),
                            self.cert.not_valid_after_utc.timestamp())

    # ------------------------------------------------------------------ index, revocation, kill switch, CRL
    def _append(self, event: dict[str, Any]) -> None:
        line = (json.dumps(event, sort_keys=True) + "\n").encode()
        with self._locked():
            fd = os.open(os.path.join(self._dirname, "index.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.fchmod(fd, 0o600)
                st = os.fstat(fd)
                os.write(fd, line)
            finally:
                os.close(fd)
            with self._mutex:
                self._index.appended(st.st_ino, st.st_size, event, len(line))

    def _state(self) -> Index:
        with self._mutex:
            self._index.refresh(os.path.join(self._dirname, "index.jsonl"))
            return self._index

    def entries(self) -> list[IndexEntry]:
        """Every certificate the CA issued, in issue order, with its revocation state."""
        with self._mutex:
            return list(self._state().entries.values())

    def entry(self, serial: int) -> IndexEntry | None:
        """The certificate with this serial, as the index knows it now."""
        with self._mutex:
            return self._state().entries.get(serial)

    def latest(self, name: str) -> IndexEntry | None:
        """The newest certificate issued to ``name`` (revoked or not), or None."""
        with self._mutex:
            return next((e for e in reversed(self._state().entries.values()) if e.name == name), None)

    def blocked(self) -> dict[str, BlockEntry]:
        """The members on the kill switch, by name."""
        with self._mutex:
            return dict(self._state().blocked)

    def block(self, name: str, *, reason: str = "", by: str = "") -> BlockEntry:
        """Puts ``name`` on the kill switch: no issue, renewal or join until :meth:`unblock`."""
        validate_agent_name(name)
        entry = BlockEntry(name, note(reason, "the reason"), note(by, "the operator name"), self.clock())
        self._append({"op": "block", "name": name, "reason": entry.reason, "by": entry.by, "at": entry.at})
        return entry

    def unblock(self, name: str, *, by: str = "") -> bool:
        """Takes ``name`` off the kill switch; False when it was not on it."""
        validate_agent_name(name)
        with self._locked():
            if name not in self._state().blocked:
                return False
            self._append({"op": "unblock", "name": name, "by": note(by, "the operator name"), "at": self.clock()})
            return True

    def revoke(self, name_or_serial: str, *, reason: str = "", by: str = "") -> list[IndexEntry]:
        """Revokes every unrevoked certificate of an agent name, or one serial (hex); rewrites the CRL."""
        reason, by = note(reason, "the reason"), note(by, "the operator name")
        target = name_or_serial.strip().lower()
        by_serial = target.removeprefix("0x")
        with self._locked():
            entries = self.entries()
            hits = [e for e in entries if e.revoked_at is None and
                    (e.name == target or format(e.serial, "x") == by_serial)]
            # what a revoked certificate's holder renewed into is revoked with it (a stolen key cannot fork)
            serials = {e.serial for e in hits}
            for e in entries:  # issue order: a renewal comes after what it renewed
                if e.renewed_from in serials and e.serial not in serials:
                    serials.add(e.serial)
                    if e.revoked_at is None:
                        hits.append(e)
            if not hits:
                raise PKIError(f"no unrevoked certificate matches {name_or_serial[:80]!r}")
            now = self.clock()
            for e in hits:
                self._append({"op": "revoke", "serial": format(e.serial, "x"), "at": now, "reason": reason, "by": by})
            self.write_crl()
        return hits

    def write_crl(self, *, validity: float = 86400.0) -> Path:
        """Signs crl.pem with the current intermediate (nextUpdate = now + ``validity``); CRLNumber only grows."""
        with self._locked():
            path = self.crl_path
            previous = crl_number(path.read_bytes()) if path.exists() else None
            now = self.clock()
            # expired certificates fail every validity check: the CRL need not list them forever
            revoked = [(e.serial, e.revoked_at) for e in self.entries()
                       if e.revoked_at is not None and e.not_after > now - BACKDATE]
            crl = build_crl(self.cert, self.key, revoked, now=now, validity=validity,
                            number=next_crl_number(previous, now), backdate=BACKDATE)
            write_public(path, crl.public_bytes(serialization.Encoding.PEM))
        return path

    @property
    def crl_path(self) -> Path:
        return self.dir / "crl.pem"
