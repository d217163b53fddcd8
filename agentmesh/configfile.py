"""Reading the mesh config file: YAML in, validated frozen :class:`agentmesh.config.MeshConfig` out.

The parser maps YAML onto the dataclasses of :mod:`agentmesh.config`, which check their values
themselves. Every error names the bad key (``agents.ingestor.address: ...``); unknown keys are
refused with the nearest valid key. Relative paths are resolved against the directory of the file.
"""

from __future__ import annotations

from pathlib import Path

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
    MetricsConfig,
    PolicyRule,
    RateLimitConfig,
    RateRule,
    TokensConfig,
    host_port,
)
from agentmesh.configsection import Section
from agentmesh.errors import ConfigError
from agentmesh.identity import validate_agent_name
from agentmesh.trust import FAILURE_MODES, RevocationPolicy
from agentmesh.units import parse_rate

__all__ = ["load_config", "parse_config"]


def _public_url(v: str | None, key: str) -> str | None:
    if v is None:
        return None
    from urllib.parse import urlsplit

    u = urlsplit(v)
    if u.scheme not in ("https", "http") or not u.hostname or u.query or u.fragment:
        raise ConfigError(f"{key}: expected an absolute http(s) URL without query, got {v!r}")
    return v.rstrip("/")


_address = host_port  # bridge.listen (the other sections' addresses are checked by their dataclasses)


def _agent(name: str, s: Section, base: Path, identities: Path) -> AgentConfig:
    app = s.text("app")
    a2a = _a2a(s.section("a2a"), base) if s.has("a2a") else None
    address = s.text("address", required=True)
    identity_dir = s.path_("identity", base) or identities / str(name)
    roles = s.strs("roles")
    descriptors = s.strs("descriptors", A2A_DESCRIPTORS if a2a is not None else DEFAULT_DESCRIPTORS)
    replicas = s.strs("replicas")
    listen = s.text("listen")
    s.done()
    return AgentConfig(name=name, address=address, identity_dir=identity_dir, app=app, roles=roles,
                       descriptors=descriptors, replicas=replicas, a2a=a2a, listen=listen)


def _a2a(s: Section, base: Path) -> A2AConfig:
    """``agents.<name>.a2a``: ``card`` (and ``extended_card``) inline or as a JSON file's path."""
    cfg = A2AConfig(
        card=_card(s, "card", base, required=True),  # type: ignore[arg-type]
        extended_card=_card(s, "extended_card", base),
        max_tasks=s.integer("max_tasks", 100_000, minimum=1),
        max_tasks_per_principal=s.integer("max_tasks_per_principal", 1000, minimum=1),
        task_ttl=s.duration("task_ttl", 7 * 86400.0),
    )
    s.done()
    return cfg


def _card(s: Section, k: str, base: Path, *, required: bool = False) -> str | None:
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


def _rule(i: int, s: Section) -> PolicyRule:
    """``policy[i]``; the rule checks itself, and :class:`MeshConfig` the names it mentions."""
    fields = {key: s.strs(key) for key in ("to", "methods", "from", "roles", "principals", "via", "chain",
                                           "scopes", "skills")}
    name = s.text("name", f"rule-{i}")
    action = s.text("action", "allow")
    s.done()
    return PolicyRule(name, action, **{("from_" if k == "from" else k): v for k, v in fields.items()})


def _rate_rule(i: int, s: Section) -> RateRule:
    match = s.section("match")
    methods, roles, principals, to = (match.strs(k) for k in ("methods", "roles", "principals", "to"))
    match.done()
    name = s.text("name", f"limit-{i}")
    rate = s.get("rate")
    if rate is None:
        s.misspelt("rate")
        raise ConfigError(f"{s.key('rate')}: required (e.g. 10/s)")
    per_second = parse_rate(rate, what=s.key("rate"))
    burst = s.integer("burst", 0, minimum=1) if s.has("burst") else max(1, int(per_second))
    s.done()
    return RateRule(name=name, rate=per_second, burst=burst, methods=methods, roles=roles, principals=principals,
                    to=to)


def _metrics(s: Section) -> MetricsConfig:
    """``metrics``: ``addresses`` (member -> host:port), ``host``, ``port_base``, ``otlp_endpoint`` and
    ``otlp_interval``."""
    addresses = s.section("addresses")
    by_member = {str(name): addresses.text(str(name), required=True) for name in list(addresses.raw)}
    addresses.done()
    cfg = MetricsConfig(addresses=by_member, host=s.text("host", "127.0.0.1"),
                        port_base=s.integer("port_base", 0, minimum=1, maximum=65535) if s.has("port_base") else None,
                        otlp_endpoint=s.text("otlp_endpoint"), otlp_interval=s.duration("otlp_interval", 15.0))
    s.done()
    return cfg


def _list_of_sections(s: Section, k: str) -> list[Section]:
    v = s.get(k)
    if v is None:
        return []
    if not isinstance(v, list):
        raise ConfigError(f"{s.key(k)}: expected a list")
    return [Section(item, f"{s.key(k)}[{i}]") for i, item in enumerate(v)]


def parse_config(raw: object, base: Path, source: Path | None = None) -> MeshConfig:
    """Validates an already-loaded YAML document; ``base`` resolves relative paths."""
    top = Section(raw, "")
    td = top.text("trust_domain", required=True)
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
        issuer, jwks_file, jwks_url = iss.text("iss", required=True), iss.path_("jwks_file", base), iss.text("jwks_url")
        audience, roles_claim = iss.text("audience"), iss.text("roles_claim", "roles")
        iss.done()
        issuers.append(ExternalIssuer(issuer=issuer, jwks_file=jwks_file, jwks_url=jwks_url, audience=audience,
                                      roles_claim=roles_claim))
    algs = t.strs("algorithms", ("ES256", "EdDSA"))
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

    rl = top.section("rate_limits")
    rate_limits = RateLimitConfig(
        backend=rl.text("backend", "memory"),
        failure_mode=rl.text("failure_mode", "open"),
        rules=tuple(_rate_rule(i, s) for i, s in enumerate(_list_of_sections(rl, "rules"))),
        max_buckets=rl.integer("max_buckets", 100_000, minimum=1),
        idle_ttl=rl.duration("idle_ttl", 600.0),
    )
    rl.done()

    a = top.section("audit")
    required = a.get("required", False)  # false | true | the name of an exporter
    if not isinstance(required, bool | str) or required == "":
        raise ConfigError(f"audit.required: expected true, false or an exporter's name, got {required!r}")
    never_rotate = type(a.get("jsonl_rotate_bytes")) is int and a.get("jsonl_rotate_bytes") == 0
    audit = AuditConfig(
        exporters=a.strs("exporters", ("jsonl",)),
        jsonl_path=a.path_("jsonl_path", base, ca_dir.parent / "audit.jsonl"),
        otlp_endpoint=a.text("otlp_endpoint"),
        required=required is not False,
        required_exporter=required if isinstance(required, str) else None,
        payload_fields=a.strs("payload_fields"),
        queue_size=a.integer("queue_size", 4096, minimum=1),
        service_name=a.text("service_name", "agentmesh"),
        trace_housekeeping=a.flag("trace_housekeeping", False),
        otlp_timeout=a.duration("otlp_timeout", 5.0),
        jsonl_rotate_bytes=0 if never_rotate else a.size("jsonl_rotate_bytes", 64 * 1024 * 1024),
        jsonl_rotate_seconds=a.duration("jsonl_rotate_seconds", 0.0),
        jsonl_keep=a.integer("jsonl_keep", 0),
    )
    a.done()

    g = top.section("guard")
    guard = GuardConfig(
        max_request_bytes=g.size("max_request_bytes", 1024 * 1024),
        default_patterns=g.flag("default_patterns", True),
        patterns=g.strs("patterns"),
        action=g.text("action", "block"),
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
        handshake_timeout=b.duration("handshake_timeout", 10.0),
        idle_timeout=b.duration("idle_timeout", 5.0),
        head_timeout=b.duration("head_timeout", 10.0),
        max_head=b.size("max_head", 32 * 1024),
        body_timeout=b.duration("body_timeout", 30.0),
        max_pending_per_ip=b.integer("max_pending_per_ip", 64, minimum=1),
        txn_reuse=b.duration("txn_reuse", 0.0),
        public_url=_public_url(b.text("public_url"), "bridge.public_url"),
    )
    if "*" in bridge.cors_origins:
        raise ConfigError("bridge.cors_origins: '*' is not allowed; list the origins explicitly")
    for key in ("handshake_timeout", "idle_timeout", "head_timeout", "max_head", "body_timeout"):
        if not getattr(bridge, key) > 0:
            raise ConfigError(f"bridge.{key}: must be more than 0 (it bounds what a client may hold)")
    b.done()

    c = top.section("control")
    control_name = c.text("name", "control")
    control = ControlConfig(
        name=control_name,
        address=c.text("address", "127.0.0.1:7100"),
        identity_dir=c.path_("identity", base, identities / control_name),
        join_address=c.text("join_address"),
        cert_ttl=c.duration("cert_ttl", 86400.0),
        connect_timeout=c.duration("connect_timeout", 30.0),
        listen=c.text("listen"),
        join_listen=c.text("join_listen"),
    )
    c.done()

    r = top.section("revocation")
    revocation = RevocationPolicy(
        max_staleness=r.duration("max_staleness", 120.0),
        failure_mode=r.choice("failure_mode", FAILURE_MODES, "closed"),  # type: ignore[arg-type]
    )
    r.done()

    metrics = _metrics(top.section("metrics"))

    max_connection_age = top.duration("max_connection_age", 0.0)
    grace_period = top.duration("grace_period", 10.0)
    max_concurrent_streams = top.integer("max_concurrent_streams", 1000, minimum=1)
    top.done()
    return MeshConfig(
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
        metrics=metrics,
        max_connection_age=max_connection_age,
        grace_period=grace_period,
        max_concurrent_streams=max_concurrent_streams,
        source=source,
    )


def _yaml_error(e: yaml.YAMLError, text: str = "") -> str:
    """One line: where the YAML went wrong (line, column) and yaml's reason."""
    if isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow: it has an offset, no mark
        pos = max(0, min(e.position, len(text)))
        line, column = text.count("\n", 0, pos) + 1, pos - (text.rfind("\n", 0, pos) + 1) + 1
        return f"invalid YAML at line {line}, column {column}: {' '.join(str(e.reason).split())} ({e.character!r})"
    mark = getattr(e, "problem_mark", None)
    reason = " ".join(str(getattr(e, "problem", None) or type(e).__name__).split())
    context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and start is not None:
        reason += f" ({' '.join(str(context).split())} that starts at line {start.line + 1}, column {start.column + 1})"
    if mark is None:
        return f"invalid YAML: {reason}"
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {reason}"


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
        raise ConfigError(f"{p}: {_yaml_error(e, text)}") from None
    try:
        return parse_config(raw, p.resolve().parent, p)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e.message}") from None
