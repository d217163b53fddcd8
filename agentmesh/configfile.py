"""Reading the mesh config file: YAML in, validated frozen :class:`agentmesh.config.MeshConfig` out.

Every error names the bad key (``agents.ingestor.address: ...``); unknown keys are refused.
Relative paths are resolved against the directory of the config file.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import yaml

from agentmesh.config import (
    A2A_DESCRIPTORS,
    DEFAULT_DESCRIPTORS,
    A2AConfig,
    AgentConfig,
    AuditConfig,
    BridgeConfig,
    ControlConfig,
    ExternalIssuer,
    GuardConfig,
    MeshConfig,
    PolicyRule,
    RateLimitConfig,
    RateRule,
    TokensConfig,
)
from agentmesh.errors import ConfigError
from agentmesh.identity import validate_agent_name, validate_trust_domain
from agentmesh.trust import FAILURE_MODES, RevocationPolicy
from agentmesh.units import parse_duration, parse_rate, parse_size

__all__ = ["load_config", "parse_config"]


# ----------------------------------------------------------------------------- parsing helpers


class _Section:
    """A mapping being read, that remembers its dotted path and refuses unknown keys."""

    def __init__(self, raw: object, path: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(raw).__name__}")
        self.raw: dict[str, Any] = raw
        self.path = path
        self.seen: set[str] = set()

    def key(self, k: str) -> str:
        return f"{self.path}.{k}" if self.path else k

    def get(self, k: str, default: Any = None) -> Any:
        self.seen.add(k)
        return self.raw.get(k, default)

    def has(self, k: str) -> bool:
        return k in self.raw

    def text(self, k: str, default: str | None = None, *, required: bool = False) -> Any:
        v = self.get(k, default)
        if v is None:
            if required:
                raise ConfigError(f"{self.key(k)}: required")
            return None
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"{self.key(k)}: expected a non-empty string, got {v!r}")
        return v

    def flag(self, k: str, default: bool) -> bool:
        v = self.get(k, default)
        if not isinstance(v, bool):
            raise ConfigError(f"{self.key(k)}: expected true or false, got {v!r}")
        return v

    def integer(self, k: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
        v = self.get(k, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum or (maximum is not None and v > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            raise ConfigError(f"{self.key(k)}: expected an integer {bound}, got {v!r}")
        return v

    def strs(self, k: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        v = self.get(k)
        if v is None:
            return default
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise ConfigError(f"{self.key(k)}: expected a list of strings, got {v!r}")
        return tuple(v)

    def duration(self, k: str, default: float) -> float:
        v = self.get(k)
        return default if v is None else parse_duration(v, what=self.key(k))

    def size(self, k: str, default: int) -> int:
        v = self.get(k)
        return default if v is None else parse_size(v, what=self.key(k))

    def path_(self, k: str, base: Path, default: Path | None = None) -> Path | None:
        v = self.text(k)
        if v is None:
            return default
        p = Path(v).expanduser()
        return p if p.is_absolute() else (base / p)

    def section(self, k: str) -> _Section:
        return _Section(self.get(k), self.key(k))

    def choice(self, k: str, options: tuple[str, ...], default: str) -> str:
        v = self.get(k, default)
        if v not in options:
            raise ConfigError(f"{self.key(k)}: expected one of {', '.join(options)}, got {v!r}")
        return str(v)

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.seen)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")


def _public_url(v: str | None, key: str) -> str | None:
    if v is None:
        return None
    from urllib.parse import urlsplit

    u = urlsplit(v)
    if u.scheme not in ("https", "http") or not u.hostname or u.query or u.fragment:
        raise ConfigError(f"{key}: expected an absolute http(s) URL without query, got {v!r}")
    return v.rstrip("/")


def _address(v: str, key: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: expected host:port, got {v!r}")
    return v


def _ipv4_address(v: str, key: str) -> str:
    host = _address(v, key).rpartition(":")[0]
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ConfigError(f"{key}: replicas are IPv4 host:port; for a DNS name with several addresses, "
                          f"put it in 'address' (calls are balanced round-robin over its records)") from None
    return v


def _agent(name: str, s: _Section, base: Path, identities: Path) -> AgentConfig:
    try:
        validate_agent_name(name)
    except ConfigError as e:
        raise ConfigError(f"{s.path}: {e}") from None
    app = s.text("app")
    if app is not None and (":" not in app or app.startswith(":") or app.endswith(":")):
        raise ConfigError(f"{s.key('app')}: expected module:Class, got {app!r}")
    a2a = _a2a(s.section("a2a"), base) if s.has("a2a") else None
    cfg = AgentConfig(
        name=name,
        address=_address(s.text("address", required=True), s.key("address")),
        identity_dir=s.path_("identity", base) or identities / name,
        app=app,
        roles=s.strs("roles"),
        descriptors=s.strs("descriptors", A2A_DESCRIPTORS if a2a is not None else DEFAULT_DESCRIPTORS),
        replicas=tuple(_ipv4_address(r, s.key("replicas")) for r in s.strs("replicas")),
        a2a=a2a,
    )
    s.done()
    return cfg


def _a2a(s: _Section, base: Path) -> A2AConfig:
    """``agents.<name>.a2a``: ``card`` (and ``extended_card``) inline or as a JSON file's path."""
    cfg = A2AConfig(
        card=_card(s, "card", base, required=True),  # type: ignore[arg-type]
        extended_card=_card(s, "extended_card", base),
        max_tasks=s.integer("max_tasks", 100_000, minimum=1),
        task_ttl=s.duration("task_ttl", 7 * 86400.0),
    )
    s.done()
    return cfg


def _card(s: _Section, k: str, base: Path, *, required: bool = False) -> str | None:
    import json

    from agentmesh.a2a.sdk import card_from_json

    raw = s.get(k)
    key = s.key(k)
    if raw is None:
        if required:
            raise ConfigError(f"{key}: required (an AgentCard, inline or the path of its JSON file)")
        return None
    if isinstance(raw, dict):
        text = json.dumps(raw)
    elif isinstance(raw, str) and raw.strip():
        path = Path(raw).expanduser()
        path = path if path.is_absolute() else base / path
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{key}: cannot read {path}: {e.strerror or e}") from None
        key = f"{key} ({path})"
    else:
        raise ConfigError(f"{key}: expected an AgentCard mapping or the path of its JSON file, got {raw!r}")
    from google.protobuf import json_format

    card = card_from_json(text, key)
    return json_format.MessageToJson(card, indent=None, sort_keys=True)


def _rule(i: int, s: _Section) -> PolicyRule:
    name = s.text("name", f"rule-{i}")
    action = s.choice("action", ("allow", "deny"), "allow")
    rule = PolicyRule(
        name=name,
        action=action,  # type: ignore[arg-type]
        to=s.strs("to"),
        methods=s.strs("methods"),
        from_=s.strs("from"),
        roles=s.strs("roles"),
        principals=s.strs("principals"),
        via=s.strs("via"),
        chain=s.strs("chain"),
        scopes=s.strs("scopes"),
        skills=s.strs("skills"),
    )
    for m in rule.methods:
        if not m.startswith("/") and m != "*":
            raise ConfigError(f"{s.key('methods')}: {m!r} must be a full gRPC method name like /pkg.Service/Method")
    s.done()
    return rule


def _check_skills(policy: tuple[PolicyRule, ...], agents: dict[str, AgentConfig]) -> None:
    """A rule's ``skills`` must be skills of an A2A agent it can reach: a misspelt skill never matches."""
    import json

    declared: dict[str, set[str]] = {
        name: {s.get("id", "") for s in json.loads(a.a2a.card).get("skills", [])}
        | ({s.get("id", "") for s in json.loads(a.a2a.extended_card).get("skills", [])}
           if a.a2a.extended_card else set())
        for name, a in agents.items() if a.a2a is not None
    }
    for rule in policy:
        if not rule.skills:
            continue
        reach = [n for n in (rule.to or tuple(declared)) if n in declared]
        if not reach:
            raise ConfigError(f"policy.{rule.name}.skills: no A2A agent (with an a2a: card) is among "
                              f"{list(rule.to) or 'the agents'}")
        known = set().union(*(declared[n] for n in reach))
        for skill in rule.skills:
            if skill not in known:
                raise ConfigError(f"policy.{rule.name}.skills: {skill!r} is not a skill of "
                                  f"{', '.join(reach)} (their cards declare: {', '.join(sorted(known)) or 'none'})")


def _rate_rule(i: int, s: _Section) -> RateRule:
    match = s.section("match")
    rate = s.get("rate")
    if rate is None:
        raise ConfigError(f"{s.key('rate')}: required (e.g. 10/s)")
    rr = RateRule(
        name=s.text("name", f"limit-{i}"),
        rate=parse_rate(rate, what=s.key("rate")),
        burst=s.integer("burst", 0, minimum=1) if s.has("burst") else max(1, int(parse_rate(rate))),
        methods=match.strs("methods"),
        roles=match.strs("roles"),
        principals=match.strs("principals"),
        to=match.strs("to"),
    )
    match.done()
    s.done()
    return rr


def _list_of_sections(s: _Section, k: str) -> list[_Section]:
    v = s.get(k)
    if v is None:
        return []
    if not isinstance(v, list):
        raise ConfigError(f"{s.key(k)}: expected a list")
    return [_Section(item, f"{s.key(k)}[{i}]") for i, item in enumerate(v)]


def parse_config(raw: object, base: Path, source: Path | None = None) -> MeshConfig:
    """Validates an already-loaded YAML document; ``base`` resolves relative paths."""
    top = _Section(raw, "")
    td = top.text("trust_domain", required=True)
    try:
        validate_trust_domain(td)
    except ConfigError as e:
        raise ConfigError(f"trust_domain: {e}") from None
    ca_dir = top.path_("ca", base, base / ".mesh" / "ca")
    assert ca_dir is not None
    identities = top.path_("identities", base, ca_dir.parent / "identities")
    assert identities is not None

    agents_s = top.section("agents")
    agents = {}
    for name in list(agents_s.raw):
        agents[name] = _agent(name, agents_s.section(name), base, identities)
    agents_s.done()

    t = top.section("tokens")
    issuers = []
    for iss in _list_of_sections(t, "issuers"):
        ei = ExternalIssuer(
            issuer=iss.text("iss", required=True),
            jwks_file=iss.path_("jwks_file", base),
            jwks_url=iss.text("jwks_url"),
            audience=iss.text("audience"),
            roles_claim=iss.text("roles_claim", "roles"),
        )
        if (ei.jwks_file is None) == (ei.jwks_url is None):
            raise ConfigError(f"{iss.path}: exactly one of jwks_file or jwks_url is required")
        iss.done()
        issuers.append(ei)
    algs = t.strs("algorithms", ("ES256", "EdDSA"))
    for alg in algs:
        if alg.lower() == "none":
            raise ConfigError(f"{t.key('algorithms')}: 'none' is never accepted")
    tokens = TokensConfig(
        issuer=t.text("issuer", f"spiffe://{td}"),
        audience=t.text("audience", "agentmesh"),
        ttl=t.duration("ttl", 300.0),
        client_ttl=t.duration("client_ttl", 900.0),
        leeway=t.duration("leeway", 30.0),
        algorithms=algs,
        hmac_secret_file=t.path_("hmac_secret_file", base),
        max_token_bytes=t.size("max_token_bytes", 8192),
        max_delegation_depth=t.integer("max_delegation_depth", 4, minimum=1, maximum=8),
        txn_ttl=t.duration("txn_ttl", 300.0),
        link_ttl=t.duration("link_ttl", 60.0),
        issuers=tuple(issuers),
        revocation_refresh=t.duration("revocation_refresh", 5.0),
    )
    t.done()

    policy = tuple(_rule(i, s) for i, s in enumerate(_list_of_sections(top, "policy")))
    names = [r.name for r in policy]
    if len(set(names)) != len(names):
        raise ConfigError("policy: rule names must be unique")

    rl = top.section("rate_limits")
    backend = rl.text("backend", "memory")
    if backend != "memory" and not backend.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"rate_limits.backend: expected 'memory' or a redis:// URL, got {backend!r}")
    rate_limits = RateLimitConfig(
        backend=backend,
        failure_mode=rl.choice("failure_mode", ("open", "closed"), "open"),  # type: ignore[arg-type]
        rules=tuple(_rate_rule(i, s) for i, s in enumerate(_list_of_sections(rl, "rules"))),
        max_buckets=rl.integer("max_buckets", 100_000, minimum=1),
        idle_ttl=rl.duration("idle_ttl", 600.0),
    )
    rl.done()

    a = top.section("audit")
    exporters = a.strs("exporters", ("jsonl",))
    for exp in exporters:
        if exp not in ("none", "console", "jsonl", "otlp"):
            raise ConfigError(f"audit.exporters: unknown exporter {exp!r} (none, console, jsonl, otlp)")
    audit = AuditConfig(
        exporters=exporters,
        jsonl_path=a.path_("jsonl_path", base, ca_dir.parent / "audit.jsonl"),
        otlp_endpoint=a.text("otlp_endpoint"),
        required=a.flag("required", False),
        payload_fields=a.strs("payload_fields"),
        queue_size=a.integer("queue_size", 4096, minimum=1),
        service_name=a.text("service_name", "agentmesh"),
    )
    if "otlp" in exporters and not audit.otlp_endpoint:
        raise ConfigError("audit.otlp_endpoint: required when the otlp exporter is enabled")
    a.done()

    g = top.section("guard")
    guard = GuardConfig(
        max_request_bytes=g.size("max_request_bytes", 1024 * 1024),
        default_patterns=g.flag("default_patterns", True),
        patterns=g.strs("patterns"),
        action=g.choice("action", ("block", "flag"), "block"),  # type: ignore[arg-type]
    )
    g.done()

    b = top.section("bridge")
    bridge_name = validate_agent_name(b.text("name", "bridge"))
    bridge = BridgeConfig(
        name=bridge_name,
        listen=_address(b.text("listen", "127.0.0.1:8443"), "bridge.listen"),
        identity_dir=b.path_("identity", base, identities / bridge_name),
        tls=b.flag("tls", True),
        tls_cert=b.path_("tls_cert", base),
        tls_key=b.path_("tls_key", base),
        cors_origins=b.strs("cors_origins"),
        max_body=b.size("max_body", 1024 * 1024),
        max_timeout=b.duration("max_timeout", 60.0),
        default_timeout=b.duration("default_timeout", 30.0),
        http_parser=b.choice("http_parser", ("httptools", "h11"), "httptools"),  # type: ignore[arg-type]
        max_connections=b.integer("max_connections", 1024, minimum=1),
        txn_reuse=b.duration("txn_reuse", 0.0),
        public_url=_public_url(b.text("public_url"), "bridge.public_url"),
    )
    if "*" in bridge.cors_origins:
        raise ConfigError("bridge.cors_origins: '*' is not allowed; list the origins explicitly")
    b.done()

    c = top.section("control")
    control_name = validate_agent_name(c.text("name", "control"))
    control = ControlConfig(
        name=control_name,
        address=_address(c.text("address", "127.0.0.1:7100"), "control.address"),
        identity_dir=c.path_("identity", base, identities / control_name),
        join_address=_address(c.text("join_address"), "control.join_address") if c.has("join_address") else None,
        cert_ttl=c.duration("cert_ttl", 86400.0),
        connect_timeout=c.duration("connect_timeout", 30.0),
    )
    if control.cert_ttl < 2:
        raise ConfigError("control.cert_ttl: must be at least 2s")
    c.done()

    r = top.section("revocation")
    revocation = RevocationPolicy(
        max_staleness=r.duration("max_staleness", 120.0),
        failure_mode=r.choice("failure_mode", FAILURE_MODES, "closed"),  # type: ignore[arg-type]
    )
    r.done()

    _check_skills(policy, agents)
    cfg = MeshConfig(
        trust_domain=td,
        ca_dir=ca_dir,
        identities_dir=identities,
        agents=agents,
        tokens=tokens,
        policy=policy,
        rate_limits=rate_limits,
        audit=audit,
        guard=guard,
        bridge=bridge,
        control=control,
        revocation=revocation,
        max_connection_age=top.duration("max_connection_age", 0.0),
        grace_period=top.duration("grace_period", 10.0),
        source=source,
    )
    top.done()
    return cfg


def load_config(path: str | Path) -> MeshConfig:
    """Reads and validates a mesh config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {p}: {e.__class__.__name__}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{p}: invalid YAML{where}") from None
    try:
        return parse_config(raw, p.resolve().parent, p)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e.message}") from None
