"""Which certificate a server presents, seen from the client side.

grpcio's Python API shows the peer certificate only to servers (``ServicerContext.auth_context``;
grpc/grpc#24441 proposed it for clients and was closed unmerged), so a member cannot read the
certificate its gRPC connection was made with. This probe makes its own mutual-TLS handshake to the
same address, with the member's own identity, and returns the server's leaf: a member checks it
against the revocation data when a channel is made and whenever that data changes, so a server
presenting a revoked certificate stops receiving its calls (see ``docs/SECURITY.md``, known limits:
an attacker who can tell the probe's handshake from gRPC's could still answer them differently).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from cryptography import x509

from agentmesh.errors import Unavailable

__all__ = ["served_certificate", "split_address"]


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def served_certificate(address: str, server_name: str, identity_dir: Path, *, timeout: float = 3.0) -> x509.Certificate:
    """The leaf ``address`` presents to this member (mutual TLS, chain verified against the bundle,
    ``server_name`` checked as the DNS name, as the member's gRPC channels do). Blocking: run it in a thread."""
    host, port = split_address(address)
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(str(identity_dir / "bundle.pem"))
        ctx.load_cert_chain(str(identity_dir / "cert.pem"), str(identity_dir / "key.pem"))  # mid-renewal: next time
        ctx.set_alpn_protocols(["h2"])
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as e:
        raise Unavailable(f"cannot check the certificate {server_name} serves at {address} "
                          f"({e.__class__.__name__})") from None
    if der is None:
        raise Unavailable(f"{server_name} at {address} presented no certificate")
    return x509.load_der_x509_certificate(der)
