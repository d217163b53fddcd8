"""Agent cards as the mesh states them (pure: config in, ``AgentCard`` out), and their signature.

An A2A agent's card (``agents.<name>.a2a.card``) says what the agent does; how to reach it and how
callers authenticate is what the mesh enforces, so the mesh states it and overrides whatever the
configured card declares:

* ``supportedInterfaces``: the bridge's JSON-RPC and HTTP+JSON bindings at
  ``{public_url}/v1/agents/<name>`` (JSON-RPC first: the preferred one), then gRPC at the agent's
  mesh address (``https://host:port``: A2A wants an absolute https URL; gRPC clients dial its authority,
  with a mesh certificate). All A2A protocol version 1.0.
* ``securitySchemes``: ``bearer`` (HTTP auth, bearer format JWT) and ``mtls`` (mutual TLS).
* ``securityRequirements``: ``[{bearer}, {mtls, bearer}]``. A2A states requirements per card, not per
  interface, so the two alternatives name which interface each is for: the bridge takes a bearer JWT
  alone; on gRPC the mesh enforces a client certificate of its CA AND a mesh token bound to it
  (RFC 8705 ``cnf``). Requirements declared on skills are dropped too: what a caller may do with a
  skill is the mesh policy's (``policy[].skills``), not the card's. Note: A2A signing canonicalizes with
  empty values dropped, and a requirement of scopeless schemes is all empty values, so the signature
  covers the schemes but not the requirements (a2a-sdk 1.3.0); enforcement never reads a card.
* ``signatures``: whatever the configured card carries is dropped; only the control plane signs
  (:func:`sign_card`, with the mesh token key: A2A section 8.4).
* ``capabilities.extendedAgentCard``: whether ``extended_card`` is configured.

Everything else (name, description, skills, modes, provider...) is the configured card's.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from agentmesh.a2a.sdk import a2a_pb2, card_from_json, require
from agentmesh.config import BridgeConfig, MeshConfig
from agentmesh.errors import ConfigError

if TYPE_CHECKING:
    from a2a.types.a2a_pb2 import AgentCard

__all__ = [
    "BEARER_SCHEME",
    "CARD_PATH",
    "GRPC",
    "HTTP_JSON",
    "JSONRPC",
    "JWKS_PATH",
    "MTLS_SCHEME",
    "PROTOCOL_VERSION",
    "a2a_agents",
    "agent_url",
    "jwks_url",
    "mesh_card",
    "public_url",
    "sign_card",
]

# the protocol bindings of A2A v1.0 (a2a.utils.constants.TransportProtocol)
JSONRPC = "JSONRPC"
HTTP_JSON = "HTTP+JSON"
GRPC = "GRPC"
PROTOCOL_VERSION = "1.0"
BEARER_SCHEME = "bearer"
MTLS_SCHEME = "mtls"
CARD_PATH = "/.well-known/agent-card.json"  # a2a.utils.constants.AGENT_CARD_WELL_KNOWN_PATH
JWKS_PATH = "/.well-known/jwks.json"


def public_url(bridge: BridgeConfig) -> str:
    """The bridge's URL as clients reach it: ``bridge.public_url``, else derived from ``bridge.listen``
    (``localhost`` for a loopback address, the name the bridge certificate carries; ``http://`` when
    ``bridge.tls`` is false). A wildcard listen address names no host: then ``public_url`` is required."""
    if bridge.public_url:
        return bridge.public_url.rstrip("/")
    host, _, port = bridge.listen.rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        ip = None
    if ip is not None and ip.is_unspecified:
        raise ConfigError(f"bridge.public_url: required when bridge.listen is a wildcard address "
                          f"({bridge.listen}): agent cards state the URL clients reach the bridge at")
    if bare == "localhost" or (ip is not None and ip.is_loopback):
        bare = "localhost"
    elif ip is not None and ip.version == 6:
        bare = f"[{bare}]"
    return f"{'https' if bridge.tls else 'http'}://{bare}:{port}"


def agent_url(config: MeshConfig, agent: str) -> str:
    """Where the bridge serves ``agent`` (JSON-RPC and HTTP+JSON): ``{public_url}/v1/agents/<name>``."""
    return f"{public_url(config.bridge)}/v1/agents/{quote(agent, safe='')}"


def jwks_url(config: MeshConfig) -> str:
    """The mesh JWKS at the bridge: the ``jku`` of card signatures."""
    return public_url(config.bridge) + JWKS_PATH


def a2a_agents(config: MeshConfig) -> tuple[str, ...]:
    """The agents with an ``a2a:`` block, in config order."""
    return tuple(name for name, agent in config.agents.items() if agent.a2a is not None)


def mesh_card(config: MeshConfig, agent: str, *, extended: bool = False) -> AgentCard:
    """The card of ``agent`` (its extended card with ``extended``) with what the mesh states filled in,
    unsigned. A ConfigError names an agent that is unknown, is no A2A agent, or has no extended card."""
    a2a = config.agent(agent).a2a
    if a2a is None:
        raise ConfigError(f"agent {agent!r} is not an A2A agent (no agents.{agent}.a2a)")
    text = a2a.extended_card if extended else a2a.card
    if text is None:
        raise ConfigError(f"agent {agent!r} has no extended card (agents.{agent}.a2a.extended_card)")
    key = f"agents.{agent}.a2a.{'extended_card' if extended else 'card'}"
    card: AgentCard = card_from_json(text, key)
    pb = a2a_pb2(key)
    url = agent_url(config, agent)
    del card.supported_interfaces[:]
    card.supported_interfaces.extend([
        pb.AgentInterface(url=url, protocol_binding=JSONRPC, protocol_version=PROTOCOL_VERSION),
        pb.AgentInterface(url=url, protocol_binding=HTTP_JSON, protocol_version=PROTOCOL_VERSION),
        pb.AgentInterface(url=f"https://{config.agent(agent).address}", protocol_binding=GRPC,
                          protocol_version=PROTOCOL_VERSION),
    ])
    card.security_schemes.clear()
    card.security_schemes[BEARER_SCHEME].CopyFrom(pb.SecurityScheme(http_auth_security_scheme=pb.HTTPAuthSecurityScheme(
        scheme="bearer", bearer_format="JWT",
        description=f"At the bridge ({JSONRPC}, {HTTP_JSON}): a JWT of the mesh issuer ({config.tokens.issuer}) "
                    f"or of an issuer it trusts, audience {config.tokens.audience}. On {GRPC}: a mesh token "
                    f"bound to the client certificate (RFC 8705), with mtls.")))
    card.security_schemes[MTLS_SCHEME].CopyFrom(pb.SecurityScheme(mtls_security_scheme=pb.MutualTlsSecurityScheme(
        description=f"On {GRPC}: a client certificate of the mesh CA naming a member "
                    f"(spiffe://{config.trust_domain}/...), with the bearer token bound to it.")))
    del card.security_requirements[:]
    card.security_requirements.extend([
        pb.SecurityRequirement(schemes={BEARER_SCHEME: pb.StringList()}),
        pb.SecurityRequirement(schemes={MTLS_SCHEME: pb.StringList(), BEARER_SCHEME: pb.StringList()}),
    ])
    for skill in card.skills:
        del skill.security_requirements[:]
    card.capabilities.extended_agent_card = a2a.extended_card is not None
    del card.signatures[:]
    return card


def sign_card(card: AgentCard, key: Any, *, algorithm: str, kid: str, jku: str) -> AgentCard:
    """``card`` with one more signature (A2A section 8.4: a detached JWS over its RFC 8785 canonical form),
    by ``key`` (a private key object of ``algorithm``, ES256 or EdDSA); the protected header carries
    ``kid``, ``alg``, ``typ: JOSE`` and ``jku`` (where the key set is published)."""
    signing = require("a2a.utils.signing", "signing agent cards")
    sign = signing.create_agent_card_signer(key, {"kid": kid, "alg": algorithm, "typ": "JOSE", "jku": jku})
    signed: AgentCard = sign(card)
    return signed
