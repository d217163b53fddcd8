"""An agent's identity on disk (cert.pem, key.pem, bundle.pem) and the gRPC credentials made from it.

Certificates replaced on disk are picked up without a restart: the server side through
``grpc.dynamic_ssl_server_credentials`` (whose fetcher runs on gRPC core threads, so it is
thread-safe and costs one ``stat`` per second at most), the client side by a version number that
channel caches compare against.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agentmesh.config import MeshConfig
from agentmesh.errors import PKIError
from agentmesh.identity import cert_thumbprint, peer_identity_from_cert

__all__ = ["AgentIdentity", "IdentityFiles", "install_bundle", "install_identity", "member_identity"]

NEXT = ".next"  # suffix of the files of an identity being installed


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def install_identity(directory: Path, *, cert_chain: bytes, key: bytes | None, bundle: bytes) -> None:
    """Replaces an identity on disk so that a reader (or a restart) never pairs a key with the wrong
    certificate: the new files are written completely beside the old ones (``*.next``), then moved
    into place key first; :meth:`IdentityFiles.read` finishes an install cut off between the moves."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_atomic(directory / ("bundle.pem" + NEXT), bundle, 0o644)
    _write_atomic(directory / ("cert.pem" + NEXT), cert_chain, 0o644)
    if key is not None:
        _write_atomic(directory / ("key.pem" + NEXT), key, 0o600)
        os.replace(directory / ("key.pem" + NEXT), directory / "key.pem")
    _finish_install(directory)


def install_bundle(directory: Path, bundle: bytes) -> None:
    """Replaces only the trust bundle (a root rollover), atomically; the key and certificate are untouched
    (a renewal may be installing them at the same moment)."""
    _write_atomic(directory / "bundle.pem", bundle, 0o644)


def _finish_install(directory: Path) -> bool:
    """Moves a pending certificate and bundle into place once their key is (the last step of
    :func:`install_identity`, also what a reader does after an install was cut off). True if it moved any."""
    if (directory / ("key.pem" + NEXT)).exists():
        return False  # the key was not moved yet: the old identity is still whole
    moved = False
    for name in ("bundle.pem", "cert.pem"):
        with contextlib.suppress(FileNotFoundError):  # another reader finished it first
            os.replace(directory / (name + NEXT), directory / name)
            moved = True
    return moved


@dataclass(frozen=True, slots=True)
class IdentityFiles:
    """The three PEM files of one identity, read together."""

    cert_chain: bytes
    key: bytes
    bundle: bytes
    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    thumbprint: str  # x5t#S256 of the leaf: what tokens issued for this identity are bound to

    @classmethod
    def read(cls, directory: Path) -> IdentityFiles:
        try:
            return cls._read(directory)
        except PKIError:
            if not _finish_install(directory):
                raise
            return cls._read(directory)

    @classmethod
    def _read(cls, directory: Path) -> IdentityFiles:
        try:
            key = (directory / "key.pem").read_bytes()
            cert_chain = (directory / "cert.pem").read_bytes()
            bundle = (directory / "bundle.pem").read_bytes()
        except FileNotFoundError as e:
            raise PKIError(f"identity incomplete: {e.filename} is missing "
                           "(onboard the agent with: agentmesh cert issue NAME --ca DIR --out DIR)") from None
        except PermissionError as e:
            raise PKIError(f"cannot read {e.filename}: permission denied") from None
        try:
            certs = x509.load_pem_x509_certificates(cert_chain)
        except ValueError:
            raise PKIError(f"{directory / 'cert.pem'} holds no valid PEM certificate") from None
        try:
            private = serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError):
            raise PKIError(f"{directory / 'key.pem'} holds no valid unencrypted PEM private key") from None
        if private.public_key() != certs[0].public_key():
            # also what a reader sees in the middle of a rotation (new key, old certificate)
            raise PKIError(f"{directory / 'key.pem'} does not match {directory / 'cert.pem'}")
        return cls(cert_chain, key, bundle, certs[0], tuple(certs[1:]), cert_thumbprint(certs[0]))


class AgentIdentity:
    """A loaded identity that follows its files on disk."""

    def __init__(self, directory: str | Path, trust_domain: str, *, check_every: float = 1.0) -> None:
        self.dir = Path(directory)
        self.trust_domain = trust_domain
        self.check_every = check_every
        self._lock = threading.Lock()
        self._files = IdentityFiles.read(self.dir)
        self._roots: tuple[bytes, tuple[x509.Certificate, ...]] = (b"", ())
        self._stamp = self._stat()
        self._next_check = time.monotonic() + check_every
        self.version = 0
        self._self_check()

    def _stat(self) -> tuple[int, ...]:
        try:
            return tuple(int(os.stat(self.dir / f).st_mtime_ns) for f in ("cert.pem", "key.pem", "bundle.pem"))
        except FileNotFoundError:
            return ()

    def _self_check(self) -> None:
        me = peer_identity_from_cert(self._files.leaf, self.trust_domain, time.time())
        self.spiffe_id = me.spiffe_id
        self.thumbprint = self._files.thumbprint

    @property
    def files(self) -> IdentityFiles:
        self.refresh()
        return self._files

    @property
    def leaf_pem(self) -> bytes:
        return self._files.leaf.public_bytes(serialization.Encoding.PEM)

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        """The roots of this identity's trust bundle (parsed once per bundle)."""
        bundle = self.files.bundle
        if self._roots[0] != bundle:
            self._roots = (bundle, tuple(x509.load_pem_x509_certificates(bundle)))
        return self._roots[1]

    def reload(self) -> bool:
        """Re-reads the files now (after this process installed a renewed identity)."""
        return self.refresh(force=True)

    def refresh(self, *, force: bool = False) -> bool:
        """Re-reads the files when they changed (checked at most every ``check_every`` s). True if reloaded."""
        now = time.monotonic()
        if now < self._next_check and not force:
            return False
        with self._lock:
            if now < self._next_check and not force:
                return False
            self._next_check = now + self.check_every
            stamp = self._stat()
            if not stamp or stamp == self._stamp:
                return False
            try:
                files = IdentityFiles.read(self.dir)
            except PKIError:
                return False  # a rotation in progress: keep serving the last good identity
            self._stamp = stamp
            # the same identity: a stamp taken in the middle of an install that this read finished
            # (new key, old certificate), seen again once the install is whole; not a new version
            if (files.key, files.cert_chain, files.bundle) == (self._files.key, self._files.cert_chain,
                                                                self._files.bundle):
                return False
            self._files = files
            self.version += 1
            self._self_check()
            return True

    # ------------------------------------------------------------------ gRPC credentials
    def _server_config(self) -> grpc.ServerCertificateConfiguration:
        f = self._files
        return grpc.ssl_server_certificate_configuration([(f.key, f.cert_chain)], root_certificates=f.bundle)

    def server_credentials(self, *, client_auth: bool = True) -> grpc.ServerCredentials:
        """Server credentials following the files; by default mTLS (a verified client certificate is
        required). The fetcher runs for new handshakes and serves whatever version is current, no
        matter which reader noticed the change first."""
        served = self.version

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal served
            self.refresh()
            if self.version == served:
                return None
            served = self.version
            return self._server_config()

        # the stubs want the fetcher to return a configuration; grpc documents None as "no change"
        return grpc.dynamic_ssl_server_credentials(
            self._server_config(), fetch, require_client_authentication=client_auth  # type: ignore[arg-type]
        )

    def channel_credentials(self, files: IdentityFiles | None = None) -> grpc.ChannelCredentials:
        """Client credentials from ``files`` (a snapshot; default: the current files)."""
        f = files or self.files
        return grpc.ssl_channel_credentials(root_certificates=f.bundle, private_key=f.key,
                                            certificate_chain=f.cert_chain)


def member_identity(config: MeshConfig, name: str, *, check_every: float = 1.0) -> AgentIdentity:
    """The identity of mesh member ``name``, refused unless its certificate names that very member."""
    identity = AgentIdentity(config.identity_dir(name), config.trust_domain, check_every=check_every)
    expected = config.spiffe_id(name)
    if identity.spiffe_id != expected:
        raise PKIError(f"the identity in {identity.dir} is {identity.spiffe_id}, not {expected}")
    return identity
