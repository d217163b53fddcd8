"""The mesh config as validated, frozen data (read from a file by :mod:`agentmesh.configfile`).

Live objects (verifiers, limiters, exporters) are built from these values elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agentmesh.errors import ConfigError
from agentmesh.identity import SpiffeId, validate_agent_name
from agentmesh.trust import RevocationPolicy

__all__ = [
    "A2A_DESCRIPTORS",
    "A2AConfig",
    "AgentConfig",
    "AuditConfig",
    "BridgeConfig",
    "ControlConfig",
    "ExternalIssuer",
    "GuardConfig",
    "MeshConfig",
    "PolicyRule",
    "RateLimitConfig",
    "RateRule",
    "TokensConfig",
]

DEFAULT_DESCRIPTORS = ("agentmesh.v1.agent_pb2",)
A2A_DESCRIPTORS = ("a2a.types.a2a_pb2",)  # lf.a2a.v1.A2AService, from the a2a-sdk (the `a2a` extra)


@dataclass(frozen=True, slots=True)
class A2AConfig:
    """An agent that speaks A2A (``agents.<name>.a2a``): its card, and how the mesh keeps its tasks' owners.

    The cards are AgentCard JSON (A2A's field names), checked against the a2a-sdk's AgentCard at load;
    the mesh fills in ``supportedInterfaces`` and ``securitySchemes`` (what it enforces) and signs them.
    """

    card: str  # the public agent card, as JSON text
    extended_card: str | None = None  # served only to authenticated callers (GetExtendedAgentCard)
    max_tasks: int = 100_000  # task owners remembered per replica (oldest forgotten first: then NOT_FOUND)
    task_ttl: float = 7 * 86400.0  # s a task's owner is remembered after it was last seen


@dataclass(frozen=True, slots=True)
class AgentConfig:
    name: str
    address: str  # host:port
    identity_dir: Path  # holds cert.pem, key.pem, bundle.pem
    app: str | None = None  # "module:Class" for `agentmesh up`
    roles: tuple[str, ...] = ()
    descriptors: tuple[str, ...] = DEFAULT_DESCRIPTORS  # generated *_pb2 modules of its services
    replicas: tuple[str, ...] = ()  # extra addresses of replicas behind the same name
    a2a: A2AConfig | None = None  # an A2A agent: app names its a2a-sdk AgentExecutor


@dataclass(frozen=True, slots=True)
class ExternalIssuer:
    """An extra trusted token issuer (e.g. an organisation's OIDC provider)."""

    issuer: str
    jwks_file: Path | None = None
    jwks_url: str | None = None
    audience: str | None = None  # defaults to the mesh audience
    roles_claim: str = "roles"


@dataclass(frozen=True, slots=True)
class TokensConfig:
    issuer: str
    audience: str = "agentmesh"
    ttl: float = 300.0  # agent token lifetime (s)
    client_ttl: float = 900.0  # default lifetime of tokens made by `agentmesh token issue`
    leeway: float = 30.0
    algorithms: tuple[str, ...] = ("ES256", "EdDSA")
    hmac_secret_file: Path | None = None
    max_token_bytes: int = 8192
    max_delegation_depth: int = 4
    txn_ttl: float = 300.0  # transaction token lifetime (s), never past the subject token's
    link_ttl: float = 60.0  # hop link lifetime (s): a delegated call must start within it
    issuers: tuple[ExternalIssuer, ...] = ()
    revocation_refresh: float = 5.0

    def __post_init__(self) -> None:
        for key in ("txn_ttl", "link_ttl"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"tokens.{key}: must be positive")
        if any(e.issuer == self.issuer for e in self.issuers):
            raise ConfigError(f"tokens.issuers: {self.issuer!r} is the mesh's own issuer; an external issuer "
                              "must have another iss (its keys would otherwise sign members' own tokens)")


@dataclass(frozen=True, slots=True)
class PolicyRule:
    name: str
    action: Literal["allow", "deny"]
    to: tuple[str, ...] = ()  # agent names; empty = any
    methods: tuple[str, ...] = ()  # full gRPC method names or globs; empty = any
    from_: tuple[str, ...] = ()  # peer agent names or SPIFFE IDs; empty = any
    roles: tuple[str, ...] = ()  # any of; empty = any
    principals: tuple[str, ...] = ()  # token subjects; empty = any
    via: tuple[str, ...] = ()  # peers allowed to delegate for this rule; empty = direct calls only
    chain: tuple[str, ...] = ()  # the whole verified delegation chain, oldest first ("*": one hop, "**": any)
    scopes: tuple[str, ...] = ()  # every one must be in the transaction's scope
    skills: tuple[str, ...] = ()  # A2A SendMessage / SendStreamingMessage: the skill requested is one of these


@dataclass(frozen=True, slots=True)
class RateRule:
    name: str
    rate: float  # tokens per second
    burst: int
    methods: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    principals: tuple[str, ...] = ()
    to: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    backend: str = "memory"  # "memory" or a redis:// URL
    failure_mode: Literal["open", "closed"] = "open"
    rules: tuple[RateRule, ...] = ()
    max_buckets: int = 100_000
    idle_ttl: float = 600.0


@dataclass(frozen=True, slots=True)
class AuditConfig:
    exporters: tuple[str, ...] = ("jsonl",)  # none | console | jsonl | otlp
    jsonl_path: Path | None = None
    otlp_endpoint: str | None = None
    required: bool = False
    payload_fields: tuple[str, ...] = ()  # allow-list of request fields recorded (after redaction)
    queue_size: int = 4096
    service_name: str = "agentmesh"


@dataclass(frozen=True, slots=True)
class GuardConfig:
    max_request_bytes: int = 1024 * 1024
    default_patterns: bool = True
    patterns: tuple[str, ...] = ()
    action: Literal["block", "flag"] = "block"


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    name: str = "bridge"
    listen: str = "127.0.0.1:8443"
    identity_dir: Path | None = None
    tls: bool = True
    tls_cert: Path | None = None  # user-supplied HTTPS certificate (else the mesh identity)
    tls_key: Path | None = None
    cors_origins: tuple[str, ...] = ()
    max_body: int = 1024 * 1024
    max_timeout: float = 60.0
    default_timeout: float = 30.0
    http_parser: Literal["httptools", "h11"] = "httptools"  # h11 bounds request heads (16 KiB)
    max_connections: int = 1024  # concurrent connections/requests; more get 503
    txn_reuse: float = 0.0  # s a client's requests to one route may share a transaction token (0: one each)
    public_url: str | None = None  # the bridge's URL as clients reach it (agent cards); default https://<listen>


@dataclass(frozen=True, slots=True)
class ControlConfig:
    name: str = "control"
    address: str = "127.0.0.1:7100"
    identity_dir: Path | None = None
    # server-authenticated TLS only, serving nothing but JoinService (members join with a one-time token)
    join_address: str | None = None
    cert_ttl: float = 86400.0  # lifetime of the certificates the control plane issues (join, renewal)
    connect_timeout: float = 30.0  # how long a starting member waits for the control plane's trust data


@dataclass(frozen=True, slots=True)
class MeshConfig:
    trust_domain: str
    ca_dir: Path
    identities_dir: Path
    agents: Mapping[str, AgentConfig]
    tokens: TokensConfig
    policy: tuple[PolicyRule, ...] = ()
    rate_limits: RateLimitConfig = field(default_factory=RateLimitConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    revocation: RevocationPolicy = field(default_factory=RevocationPolicy)
    max_connection_age: float = 0.0  # 0: connections are not closed by age (streams are re-checked instead)
    grace_period: float = 10.0
    source: Path | None = None

    def spiffe_id(self, name: str) -> SpiffeId:
        return SpiffeId.for_agent(self.trust_domain, name)

    def agent(self, name: str) -> AgentConfig:
        try:
            return self.agents[name]
        except KeyError:
            raise ConfigError(f"unknown agent {name!r} (known: {', '.join(sorted(self.agents)) or 'none'})") \
                from None

    def identity_dir(self, name: str) -> Path:
        """Where the identity of any mesh member (agent, bridge, control) lives."""
        if name in self.agents:
            return self.agents[name].identity_dir
        if name == self.bridge.name and self.bridge.identity_dir:
            return self.bridge.identity_dir
        if name == self.control.name and self.control.identity_dir:
            return self.control.identity_dir
        return self.identities_dir / validate_agent_name(name)
