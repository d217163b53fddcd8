"""The mini CA: a root and an issuing intermediate in one directory, an append-only index, a CRL.

Directory layout (0700; keys 0600)::

    ca.json                 trust domain and format version
    root.pem  root-key.pem  self-signed root (ECDSA P-256, 10 years)
    ca.pem    ca-key.pem    issuing intermediate (1 year), signs leaves and the CRL
    bundle.pem              the trust bundle (the root)
    index.jsonl             one line per issue / revoke event (append-only)
    crl.pem                 the signed CRL of revoked leaves
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agentmesh.errors import PKIError
from agentmesh.identity import SpiffeId, validate_agent_name, validate_trust_domain
from agentmesh.pki.certs import (
    PrivateKey,
    build_certificate,
    ca_profile,
    dump_cert,
    dump_key,
    leaf_profile,
    new_key,
)

__all__ = ["CertificateAuthority", "IndexEntry", "IssuedCert", "write_identity", "write_private"]

Clock = Callable[[], float]
ROOT_TTL = 10 * 365 * 86400
INTERMEDIATE_TTL = 365 * 86400
BACKDATE = 60
DEFAULT_LEAF_TTL = 24 * 3600


def write_private(path: Path, data: bytes) -> None:
    """Writes a secret 0600, also tightening a file that already existed with wider permissions."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


@dataclass(frozen=True, slots=True)
class IssuedCert:
    name: str
    spiffe_id: SpiffeId
    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]  # intermediates, leaf excluded
    bundle: bytes  # trust bundle PEM

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    @property
    def cert_pem(self) -> bytes:
        return dump_cert(self.cert, *self.chain)

    @property
    def key_pem(self) -> bytes:
        return dump_key(self.key)


@dataclass(frozen=True, slots=True)
class IndexEntry:
    name: str
    serial: int
    spiffe_id: str
    not_after: float
    revoked_at: float | None

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if now > self.not_after else "valid"


def write_identity(issued: IssuedCert, out: Path) -> None:
    """Writes ``cert.pem`` (leaf + intermediate), ``key.pem`` (0600) and ``bundle.pem`` into ``out``.

    The key is written first and the certificate last (atomically), so a reloader that watches
    ``cert.pem`` never pairs a new certificate with an old key.
    """
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(out / "key.pem", issued.key_pem)
    _write_public(out / "bundle.pem", issued.bundle)
    _write_public(out / "cert.pem", issued.cert_pem)


class CertificateAuthority:
    """A loaded CA directory. Create one with :meth:`init`, open one with :meth:`load`."""

    def __init__(self, directory: Path, trust_domain: str, root: x509.Certificate, cert: x509.Certificate,
                 key: PrivateKey, clock: Clock = time.time) -> None:
        self.dir = directory
        self.trust_domain = trust_domain
        self.root = root
        self.cert = cert
        self.key = key
        self.clock = clock
        self.bundle = dump_cert(root)

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
        root_key, inter_key = new_key(), new_key()
        root = build_certificate(
            subject_cn=f"agentmesh root CA ({trust_domain})", subject_key=root_key,
            profile=ca_profile(trust_domain, path_length=1),
            not_before=_utc(now - BACKDATE), not_after=_utc(now + ROOT_TTL),
            issuer_cert=None, issuer_key=root_key,
        )
        inter = build_certificate(
            subject_cn=f"agentmesh issuing CA ({trust_domain})", subject_key=inter_key,
            profile=ca_profile(trust_domain, path_length=0),
            not_before=_utc(now - BACKDATE), not_after=_utc(now + INTERMEDIATE_TTL),
            issuer_cert=root, issuer_key=root_key,
        )
        write_private(d / "root-key.pem", dump_key(root_key))
        write_private(d / "ca-key.pem", dump_key(inter_key))
        _write_public(d / "root.pem", dump_cert(root))
        _write_public(d / "ca.pem", dump_cert(inter))
        _write_public(d / "bundle.pem", dump_cert(root))
        (d / "index.jsonl").write_bytes(b"")
        _write_public(d / "ca.json", json.dumps({"version": 1, "trust_domain": trust_domain}).encode())
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
            root = x509.load_pem_x509_certificate((d / "root.pem").read_bytes())
            cert = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
            key = serialization.load_pem_private_key((d / "ca-key.pem").read_bytes(), password=None)
        except PermissionError as e:
            raise PKIError(f"cannot read the CA in {d}: permission denied ({Path(e.filename).name})") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PKIError(f"the CA in {d} is unreadable or damaged ({e.__class__.__name__})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PKIError(f"the CA key in {d} is not an EC key")
        return cls(d, td, root, cert, key, clock)

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
        """Issues an X509-SVID for agent ``name``; its lifetime never outlasts the issuing CA."""
        validate_agent_name(name)
        if ttl <= 0:
            raise PKIError("certificate lifetime must be positive")
        sid = SpiffeId.for_agent(self.trust_domain, name)
        now = self.clock()
        not_after = min(now + ttl, self.cert.not_valid_after_utc.timestamp())
        leaf_key = key or new_key()
        cert = build_certificate(
            subject_cn=name, subject_key=leaf_key, profile=leaf_profile(sid, (name, *dns)),
            not_before=_utc(now - BACKDATE), not_after=_utc(not_after),
            issuer_cert=self.cert, issuer_key=self.key,
        )
        if record:
            self._append({"op": "issue", "name": name, "serial": format(cert.serial_number, "x"),
                          "spiffe_id": str(sid), "not_after": not_after})
        return IssuedCert(name, sid, cert, leaf_key, (self.cert,), self.bundle)

    # ------------------------------------------------------------------ index, revocation, CRL
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.dir / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _append(self, event: dict[str, object]) -> None:
        line = (json.dumps(event, sort_keys=True) + "\n").encode()
        with self._locked():
            fd = os.open(self.dir / "index.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def entries(self) -> list[IndexEntry]:
        """Every certificate the CA issued, in issue order, with its revocation state."""
        issued: dict[int, IndexEntry] = {}
        try:
            lines = (self.dir / "index.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            if not line.strip():
                continue
            ev = json.loads(line)
            serial = int(ev["serial"], 16)
            if ev["op"] == "issue":
                issued[serial] = IndexEntry(ev["name"], serial, ev["spiffe_id"], float(ev["not_after"]), None)
            elif ev["op"] == "revoke" and serial in issued:
                e = issued[serial]
                issued[serial] = IndexEntry(e.name, e.serial, e.spiffe_id, e.not_after, float(ev["at"]))
        return list(issued.values())

    def revoke(self, name_or_serial: str) -> list[IndexEntry]:
        """Revokes every unrevoked certificate of an agent name, or one serial (hex); rewrites the CRL."""
        entries = self.entries()
        target = name_or_serial.strip().lower()
        by_serial = target.removeprefix("0x")
        hits = [e for e in entries if e.revoked_at is None and
                (e.name == target or format(e.serial, "x") == by_serial)]
        if not hits:
            raise PKIError(f"no unrevoked certificate matches {name_or_serial!r}")
        now = self.clock()
        for e in hits:
            self._append({"op": "revoke", "serial": format(e.serial, "x"), "at": now})
        self.write_crl()
        return hits

    def write_crl(self) -> Path:
        now = self.clock()
        b = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(_utc(now - BACKDATE))
            .next_update(_utc(now + 7 * 86400))
            .add_extension(x509.CRLNumber(int(now * 1000)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
        )
        for e in self.entries():
            if e.revoked_at is not None:
                b = b.add_revoked_certificate(
                    x509.RevokedCertificateBuilder().serial_number(e.serial)
                    .revocation_date(_utc(e.revoked_at)).build()
                )
        crl = b.sign(self.key, hashes.SHA256())
        path = self.dir / "crl.pem"
        _write_public(path, crl.public_bytes(serialization.Encoding.PEM))
        return path

    @property
    def crl_path(self) -> Path:
        return self.dir / "crl.pem"

    def renew(self, name: str, *, ttl: float = DEFAULT_LEAF_TTL, dns: Sequence[str] = ()) -> IssuedCert:
        """A fresh key and certificate for an agent the CA already issued to."""
        if not any(e.name == name for e in self.entries()):
            raise PKIError(f"the CA never issued a certificate to {name!r}; use 'cert issue'")
        return self.issue(name, ttl=ttl, dns=dns)
