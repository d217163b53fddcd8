"""The mesh config as validated, frozen data (read from a file by :mod:`agentmesh.configfile`).

Each dataclass checks itself in ``__post_init__``, so a config built in code is checked exactly as one
read from a file; :class:`MeshConfig` also checks that every name a rule mentions exists (agents,
members, the methods of the agents' descriptors, A2A skills), suggesting the nearest valid one.
Live objects (verifiers, limiters, exporters) are built from these values elsewhere, without checking
them again. The checks of single values live in :mod:`agentmesh.configcheck`, the ``audit`` and ``metrics``
sections in :mod:`agentmesh.telemetryconfig`; both are re-exported here.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agentmesh.configcheck import agent_names as _agent_names
from agentmesh.configcheck import compile_method_globs, did_you_mean, host_port, safe_endpoint
from agentmesh.configcheck import method_names as _method_names
from agentmesh.configcheck import peers as _peers
from agentmesh.errors import ConfigError
from agentmesh.identity import SpiffeId, validate_agent_name, validate_trust_domain
from agentmesh.telemetryconfig import AUDIT_EXPORTERS, AuditConfig, MetricsConfig
from agentmesh.trust import RevocationPolicy

__all__ = [
    "A2A_DESCRIPTORS",
    "AUDIT_EXPORTERS",
    "SKILL_METHODS",
    "A2AConfig",
    "AgentConfig",
    "AuditConfig",
    "BridgeConfig",
    "ControlConfig",
    "ExternalIssuer",
    "GuardConfig",
    "MeshConfig",
    "MetricsConfig",
    "PolicyRule",
    "RateLimitConfig",
    "RateRule",
    "TokensConfig",
    "compile_method_globs",
    "did_you_mean",
    "host_port",
    "safe_endpoint",
]

DEFAULT_DESCRIPTORS = ("agentmesh.v1.agent_pb2",)
A2A_DESCRIPTORS = ("a2a.types.a2a_pb2",)  # lf.a2a.v1.A2AService, from the a2a-sdk (the `a2a` extra)
#: the A2A methods whose requests name a skill (agentmesh.a2a.skills.SEND_METHODS; no a2a-sdk import)
SKILL_METHODS = frozenset({"/lf.a2a.v1.A2AService/SendMessage", "/lf.a2a.v1.A2AService/SendStreamingMessage"})


# ----------------------------------------------------------------------------- checks of single values


@dataclass(frozen=True, slots=True)
class A2AConfig:
    """An agent that speaks A2A (``agents.<name>.a2a``): its card, and how the mesh keeps its tasks' owners.

    The cards are AgentCard JSON (A2A's field names), checked against the a2a-sdk's AgentCard at load;
    the mesh fills in ``supportedInterfaces`` and ``securitySchemes`` (what it enforces) and signs them.
    """

    card: str  # the public agent card, as JSON text
    extended_card: str | None = None  # served only to authenticated callers (GetExtendedAgentCard)
    max_tasks: int = 100_000  # task owners remembered per replica (oldest forgotten first: then NOT_FOUND)
    max_tasks_per_principal: int = 1000  # one principal's owners beyond this forget its own oldest, not others'
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
    #: host:port the agent's server binds (e.g. 0.0.0.0:7101); ``address`` stays what others dial.
    #: None: ``address`` (read :attr:`bind_address`, which follows a replaced ``address``)
    listen: str | None = None

    def __post_init__(self) -> None:
        where = f"agents.{self.name}"
        _agent_names(where, (self.name,))
        host_port(self.address, f"{where}.address")
        if self.listen is not None:
            host_port(self.listen, f"{where}.listen")
        app = self.app
        if app is not None and (":" not in app or app.startswith(":") or app.endswith(":")):
            raise ConfigError(f"{where}.app: expected module:Class, got {app!r}")
        for r in self.replicas:
            try:
                ipaddress.IPv4Address(host_port(r, f"{where}.replicas").rpartition(":")[0])
            except ValueError:
                raise ConfigError(f"{where}.replicas: replicas are IPv4 host:port; for a DNS name with several "
                                  "addresses, put it in 'address' (calls are balanced round-robin over its "
                                  "records)") from None

    @property
    def bind_address(self) -> str:
        """Where the agent's server listens: ``listen``, else ``address``."""
        return self.listen or self.address


@dataclass(frozen=True, slots=True)
class ExternalIssuer:
    """An extra trusted token issuer (e.g. an organisation's OIDC provider)."""

    issuer: str
    jwks_file: Path | None = None
    jwks_url: str | None = None
    audience: str | None = None  # defaults to the mesh audience
    roles_claim: str = "roles"

    def __post_init__(self) -> None:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ConfigError(f"tokens.issuers ({self.issuer}): exactly one of jwks_file or jwks_url is required")


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
        if any(alg.lower() == "none" for alg in self.algorithms):
            raise ConfigError("tokens.algorithms: 'none' is never accepted")
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

    def __post_init__(self) -> None:
        """What a rule means on its own; the names it mentions are checked by :class:`MeshConfig`."""
        where = f"policy rule {self.name}"
        if self.action not in ("allow", "deny"):
            raise ConfigError(f"{where}: action: expected one of allow, deny, got {self.action!r}")
        _agent_names(f"{where}: to", self.to)
        _method_names(f"{where}: methods", self.methods)
        _peers(f"{where}: from", self.from_)
        _peers(f"{where}: via", self.via)
        _peers(f"{where}: chain", self.chain, wildcards=True)
        if self.scopes and not (self.via or self.chain) and self.action == "allow":
            raise ConfigError(f"{where}: scopes: only delegated calls carry a scope, and an allow "
                              "rule without via or chain matches direct calls only; add via or chain")
        methods = compile_method_globs(self.methods)
        if self.skills and methods is not None and not any(methods.fullmatch(m) for m in sorted(SKILL_METHODS)):
            raise ConfigError(f"{where}: skills: only A2A SendMessage and SendStreamingMessage "
                              f"ask for a skill, and methods {list(self.methods)} names neither")


@dataclass(frozen=True, slots=True)
class RateRule:
    name: str
    rate: float  # tokens per second
    burst: int
    methods: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    principals: tuple[str, ...] = ()
    to: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """What a rule means on its own; the agents and methods it names are checked by :class:`MeshConfig`."""
        where = f"rate limit rule {self.name}"
        if isinstance(self.rate, bool) or not (self.rate > 0 and math.isfinite(self.rate)):
            raise ConfigError(f"{where}: rate: must be a positive number, got {self.rate!r}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ConfigError(f"{where}: burst: must be an integer >= 1, got {self.burst!r}")
        _method_names(f"{where}: match.methods", self.methods)
        _agent_names(f"{where}: match.to", self.to)


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    backend: str = "memory"  # "memory" or a redis:// URL
    failure_mode: Literal["open", "closed"] = "open"
    rules: tuple[RateRule, ...] = ()
    max_buckets: int = 100_000
    idle_ttl: float = 600.0

    def __post_init__(self) -> None:
        if self.backend != "memory" and not self.backend.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"rate_limits.backend: expected 'memory' or a redis:// URL, got {self.backend!r}")
        if self.failure_mode not in ("open", "closed"):
            raise ConfigError(f"rate_limits.failure_mode: expected one of open, closed, got {self.failure_mode!r}")
        seen: set[str] = set()
        for r in self.rules:  # a rule's name keys its buckets
            if r.name in seen:
                raise ConfigError(f"rate_limits.rules: duplicate rule name {r.name!r}")
            seen.add(r.name)


@dataclass(frozen=True, slots=True)
class GuardConfig:
    max_request_bytes: int = 1024 * 1024
    default_patterns: bool = True
    patterns: tuple[str, ...] = ()
    action: Literal["block", "flag"] = "block"

    def __post_init__(self) -> None:
        if self.action not in ("block", "flag"):
            raise ConfigError(f"guard.action: expected one of block, flag, got {self.action!r}")


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
    http_parser: Literal["httptools", "h11"] = "httptools"  # both bounded by max_head (agentmesh.bridge.protocol)
    max_connections: int = 1024  # concurrent connections/requests; more get 503
    # phases of a connection (agentmesh.bridge.protocol): each bounded, a connection over a cap closed at once
    handshake_timeout: float = 10.0  # s to complete the TLS handshake
    idle_timeout: float = 5.0  # s without a byte before a request (new or keep-alive connection)
    head_timeout: float = 10.0  # s from a request's first byte to the end of its head
    max_head: int = 32 * 1024  # bytes of a request head (both parsers); more: 431 / 400
    body_timeout: float = 30.0  # s from the end of the head to the end of the body
    max_pending_per_ip: int = 64  # connections per client address that have had no response yet
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
    listen: str | None = None  # host:port the control plane binds; None: address (what members dial)
    join_listen: str | None = None  # host:port the join port binds; None: join_address

    def __post_init__(self) -> None:
        _agent_names("control.name", (self.name,))
        host_port(self.address, "control.address")
        if self.listen is not None:
            host_port(self.listen, "control.listen")
        if self.join_address is not None:
            host_port(self.join_address, "control.join_address")
        if self.join_listen is not None:
            if self.join_address is None:
                raise ConfigError("control.join_listen: set join_address too (what joining members dial)")
            host_port(self.join_listen, "control.join_listen")
        if self.cert_ttl < 2:
            raise ConfigError("control.cert_ttl: must be at least 2s")

    @property
    def bind_address(self) -> str:
        """Where the control plane listens: ``listen``, else ``address``."""
        return self.listen or self.address

    @property
    def join_bind_address(self) -> str | None:
        """Where the join port listens: ``join_listen``, else ``join_address`` (None: no join port)."""
        return self.join_listen or self.join_address


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
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    max_connection_age: float = 0.0  # 0: connections are not closed by age (streams are re-checked instead)
    grace_period: float = 10.0
    #: calls one connection may have open at once on a member's server (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS):
    #: gRPC's client does not queue past it, the excess fails UNAVAILABLE; it bounds a rapid-reset flood
    max_concurrent_streams: int = 1000
    source: Path | None = None

    def __post_init__(self) -> None:
        try:
            validate_trust_domain(self.trust_domain)
        except ConfigError as e:
            raise ConfigError(f"trust_domain: {e.message}") from None
        for name, agent in self.agents.items():
            if agent.name != name:
                raise ConfigError(f"agents.{name}: holds the config of agent {agent.name!r}")
        names = [r.name for r in self.policy]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(f"policy: rule names must be unique ({name!r} is used {names.count(name)} times)")
        if self.max_concurrent_streams < 1:
            raise ConfigError("max_concurrent_streams: must be at least 1")
        self._check_metrics()
        from agentmesh.configrefs import check_references  # (it reads this module's classes)

        check_references(self)

    def _check_metrics(self) -> None:
        members = self.members()
        for name in self.metrics.addresses:
            if name not in members:
                raise ConfigError(f"metrics.addresses.{name}: not a member of this mesh"
                                  f"{did_you_mean(name, members) or ' (' + ', '.join(members) + ')'}")
        if self.metrics.port_base is not None and self.metrics.port_base + len(members) - 1 > 65535:
            raise ConfigError(f"metrics.port_base: {self.metrics.port_base} + {len(members) - 1} members "
                              "is past port 65535")

    def members(self) -> tuple[str, ...]:
        """Every member's name: the control plane, the agents in file order, the bridge."""
        return (self.control.name, *self.agents, self.bridge.name)

    def metrics_address(self, name: str) -> str | None:
        """Where member ``name`` serves its metrics (``metrics`` section), or None: nowhere."""
        m = self.metrics
        if name in m.addresses:
            return m.addresses[name]
        members = self.members()
        if m.port_base is None or name not in members:
            return None
        return f"{m.host}:{m.port_base + members.index(name)}"

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
