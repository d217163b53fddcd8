"""agentmesh: a gRPC service mesh for AI agents (mutual TLS, bound tokens, policy, limits, audit)."""

from agentmesh.config import MeshConfig
from agentmesh.configfile import load_config
from agentmesh.context import CallContext, current_call
from agentmesh.errors import (
    AuthenticationError,
    ConfigError,
    MeshError,
    PayloadBlocked,
    PayloadTooLarge,
    PeerIdentityError,
    PermissionDenied,
    PKIError,
    RateLimited,
    TokenError,
    Unavailable,
)
from agentmesh.identity import PeerIdentity, SpiffeId
from agentmesh.interceptors.client import delegating
from agentmesh.pki import CertificateAuthority
from agentmesh.runtime.channel import MeshChannels
from agentmesh.runtime.credentials import AgentIdentity
from agentmesh.runtime.node import MeshNode
from agentmesh.runtime.server import MeshServer

__version__ = "0.1.0"

__all__ = [
    "AgentIdentity",
    "AuthenticationError",
    "CallContext",
    "CertificateAuthority",
    "ConfigError",
    "MeshChannels",
    "MeshConfig",
    "MeshError",
    "MeshNode",
    "MeshServer",
    "PKIError",
    "PayloadBlocked",
    "PayloadTooLarge",
    "PeerIdentity",
    "PeerIdentityError",
    "PermissionDenied",
    "RateLimited",
    "SpiffeId",
    "TokenError",
    "Unavailable",
    "__version__",
    "current_call",
    "delegating",
    "load_config",
]
