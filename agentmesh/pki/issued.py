"""What the CA issued to a member (:class:`IssuedCert`), and writing it into the member's identity directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from agentmesh.errors import PKIError
from agentmesh.identity import SpiffeId
from agentmesh.pki.certs import PrivateKey, dump_cert, dump_key
from agentmesh.pki.store import write_private, write_public

__all__ = ["IssuedCert", "write_identity"]


@dataclass(frozen=True, slots=True)
class IssuedCert:
    name: str
    spiffe_id: SpiffeId
    cert: x509.Certificate
    key: PrivateKey | None  # None when issued from a CSR: the key never left the member
    chain: tuple[x509.Certificate, ...]  # intermediates, leaf excluded
    bundle: bytes  # trust bundle PEM
    capped: bool = False  # the issuing CA's end cut the requested lifetime short

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    @property
    def cert_pem(self) -> bytes:
        return dump_cert(self.cert, *self.chain)

    @property
    def key_pem(self) -> bytes:
        if self.key is None:
            raise PKIError(f"the certificate of {self.name} was issued from a CSR: its key stays with the agent")
        return dump_key(self.key)


def write_identity(issued: IssuedCert, out: Path) -> None:
    """Writes ``cert.pem`` (leaf + intermediate), ``key.pem`` (0600) and ``bundle.pem`` into ``out``.

    The key is written first and the certificate last (atomically), so a reloader that watches
    ``cert.pem`` never pairs a new certificate with an old key. A certificate issued from a CSR has no
    key here: ``key.pem`` (born on the member) is left as it is.
    """
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    if issued.key is not None:
        write_private(out / "key.pem", issued.key_pem)
    write_public(out / "bundle.pem", issued.bundle)
    write_public(out / "cert.pem", issued.cert_pem)
