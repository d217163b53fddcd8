"""Joining a mesh without shipping keys: the key is born here (0600), only a CSR travels.

``join()`` sends the CSR and a one-time join token to the control plane's join port over TLS that
verifies the control plane against the mesh trust bundle (``bundle.pem``, public, in the member's
identity directory), and installs the certificate it receives.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from cryptography import x509

from agentmesh.config import MeshConfig
from agentmesh.errors import ConfigError, PKIError
from agentmesh.pki.certs import dump_key, new_key
from agentmesh.pki.csr import make_csr
from agentmesh.runtime.credentials import install_identity
from agentmesh.v1 import control_pb2, control_pb2_grpc

__all__ = ["join"]


async def join(config: MeshConfig, name: str, token: str, *, bundle: Path | None = None,
               timeout: float = 10.0) -> int:
    """Joins as member ``name``; returns the serial of the certificate installed."""
    if not config.control.join_address:
        raise ConfigError("control.join_address is not set in the mesh config; the control plane serves no joins")
    directory = config.identity_dir(name)
    bundle_path = bundle or directory / "bundle.pem"
    try:
        roots = bundle_path.read_bytes()
    except FileNotFoundError:
        raise PKIError(f"joining needs the mesh trust bundle at {bundle_path} (copy the CA's bundle.pem there: "
                       "it is public) or pass --bundle FILE") from None
    key = new_key()
    csr = make_csr(key, config.spiffe_id(name))
    creds = grpc.ssl_channel_credentials(root_certificates=roots)
    options = [("grpc.ssl_target_name_override", config.control.name),
               ("grpc.default_authority", config.control.name)]
    async with grpc.aio.secure_channel(config.control.join_address, creds, options=options) as channel:
        try:
            res = await control_pb2_grpc.JoinServiceStub(channel).Join(
                control_pb2.JoinRequest(join_token=token.strip(), csr_pem=csr), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise PKIError(f"cannot reach the control plane's join port at {config.control.join_address} "
                               f"({e.code().name})") from None
            raise PKIError(f"join refused by the control plane: {e.details()}") from None
    install_identity(directory, cert_chain=res.cert_chain_pem, key=dump_key(key), bundle=res.bundle_pem)
    return int(x509.load_pem_x509_certificate(res.cert_chain_pem).serial_number)
