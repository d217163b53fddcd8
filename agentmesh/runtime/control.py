"""The control process: holds the token signing key and issues certificate-bound agent tokens.

Agents authenticate with their mTLS certificate only (they have no token yet); the token's subject
is the certificate's SPIFFE ID, its roles come from the mesh config, and ``cnf.x5t#S256`` binds it
to that very certificate (RFC 8705), so a stolen token is useless from any other peer.
"""

from __future__ import annotations

import json
import time

import grpc

from agentmesh.audit import AuditSink, build_audit
from agentmesh.clock import Clock
from agentmesh.config import MeshConfig
from agentmesh.context import current_call
from agentmesh.errors import PermissionDenied
from agentmesh.interceptors.chain import identity_chain
from agentmesh.interceptors.identity import peer_checks
from agentmesh.runtime.credentials import member_identity
from agentmesh.runtime.server import MeshServer
from agentmesh.tokens import RevocationStore, TokenAuthority
from agentmesh.v1 import control_pb2, control_pb2_grpc

__all__ = ["TokenService", "start_control"]


class TokenService(control_pb2_grpc.TokenServiceServicer):
    def __init__(self, config: MeshConfig, authority: TokenAuthority, *, clock: Clock = time.time) -> None:
        self.config = config
        self.authority = authority
        self.revocations = RevocationStore(config.ca_dir, clock=clock)
        self.clock = clock
        self._jwks = json.dumps(authority.jwks())

    def _roles_of(self, name: str | None) -> tuple[str, ...]:
        if name is not None and name in self.config.agents:
            return self.config.agents[name].roles
        if name == self.config.bridge.name:
            return ()
        raise PermissionDenied(f"{name or 'this peer'} is not a member of the mesh config; no token issued")

    async def IssueAgentToken(self, request: control_pb2.AgentTokenRequest,
                              context: grpc.aio.ServicerContext) -> control_pb2.AgentToken:
        peer = current_call().peer
        assert peer is not None, "the control chain verifies the peer first"
        roles = self._roles_of(peer.name)
        ttl = self.config.tokens.ttl
        if request.ttl_seconds:
            ttl = min(ttl, float(request.ttl_seconds))
        ttl = min(ttl, max(1.0, peer.not_after - self.clock()))  # never outlive the bound certificate
        token = self.authority.issue(sub=peer.uri, roles=roles, audience=self.config.tokens.audience,
                                     ttl=ttl, cnf_thumbprint=peer.thumbprint)
        return control_pb2.AgentToken(token=token, expires_at=int(self.clock() + ttl))

    async def ListRevoked(self, request: control_pb2.RevokedTokensRequest,
                          context: grpc.aio.ServicerContext) -> control_pb2.RevokedTokens:
        return control_pb2.RevokedTokens(jti=sorted(self.revocations.load()))

    async def GetKeySet(self, request: control_pb2.KeySetRequest,
                        context: grpc.aio.ServicerContext) -> control_pb2.KeySet:
        return control_pb2.KeySet(jwks_json=self._jwks, issuer=self.authority.issuer)


async def start_control(config: MeshConfig, *, address: str | None = None) -> tuple[MeshServer, AuditSink]:
    """Starts the control plane server (creating the token key beside the CA on first use)."""
    name = config.control.name
    authority = TokenAuthority.ensure(config.ca_dir, issuer=config.tokens.issuer)
    identity = member_identity(config, name)
    sink = build_audit(config.audit, service_name=name)
    chain = identity_chain(name, sink=sink, identities=peer_checks(config, identity))
    server = MeshServer(identity, interceptors=chain, max_connection_age=config.max_connection_age,
                        grace=config.grace_period)
    server.add(control_pb2_grpc.add_TokenServiceServicer_to_server, TokenService(config, authority),
               "agentmesh.v1.TokenService")
    await server.start(address or config.control.address)
    return server, sink
