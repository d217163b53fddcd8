"""The files of a CA directory: secrets written 0600 (atomically where a reader may be looking),
public files replaced atomically, and the CA's certificates and key read as one consistent set."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agentmesh.errors import PKIError
from agentmesh.pki.certs import PrivateKey, dump_cert

__all__ = ["CaFiles", "public_der", "read_files", "replace_private", "stamp", "write_private", "write_public"]


def write_private(path: Path, data: bytes) -> None:
    """Writes a secret 0600, also tightening a file that already existed with wider permissions."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def replace_private(path: Path, data: bytes) -> None:
    """Writes a secret 0600 beside ``path`` and renames it over ``path`` (readers see old or new, whole)."""
    tmp = path.with_name(path.name + ".tmp")
    write_private(tmp, data)
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class CaFiles:
    root: x509.Certificate
    cert: x509.Certificate
    key: PrivateKey
    bundle: bytes
    stamp: tuple[tuple[int, int, int], ...]


_STAMPED = ("ca.pem", "bundle.pem")  # every rotation or rollover replaces ca.pem; finish_rollover bundle.pem


def stamp(d: Path | str) -> tuple[tuple[int, int, int], ...]:
    out = []
    for name in _STAMPED:
        try:
            st = os.stat(os.path.join(d, name))
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append((0, 0, 0))
    return tuple(out)


def read_files(d: Path) -> CaFiles:
    stamp_ = stamp(d)
    try:
        root = x509.load_pem_x509_certificate((d / "root.pem").read_bytes())
        cert = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((d / "ca-key.pem").read_bytes(), password=None)
        bundle_path = d / "bundle.pem"
        bundle = bundle_path.read_bytes() if bundle_path.exists() else dump_cert(root)
    except PermissionError as e:
        raise PKIError(f"cannot read the CA in {d}: permission denied ({Path(e.filename).name})") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PKIError(f"the CA in {d} is unreadable or damaged ({e.__class__.__name__})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"the CA key in {d} is not an EC key")
    if public_der(key.public_key()) != public_der(cert.public_key()):
        raise PKIError(f"ca.pem and ca-key.pem in {d} do not match (a rotation in progress?); try again")
    return CaFiles(root, cert, key, bundle, stamp_)


def public_der(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
