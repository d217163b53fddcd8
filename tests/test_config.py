"""The mesh file: validated once into frozen data; every error names the bad key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from agentmesh.configfile import load_config, parse_config
from agentmesh.errors import ConfigError
from agentmesh.units import parse_duration, parse_rate, parse_size

BASE: dict[str, Any] = {"trust_domain": "example.org", "agents": {"a": {"address": "127.0.0.1:7000"}}}


def with_(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


def test_example_config_loads() -> None:
    cfg = load_config(Path(__file__).parents[1] / "examples" / "workflow" / "mesh.yaml")
    assert set(cfg.agents) == {"ingestor", "summarizer", "validator"}
    assert cfg.rate_limits.rules[0].rate == 2.0 and cfg.rate_limits.rules[0].burst == 5
    assert cfg.policy[0].action == "deny" and cfg.policy[0].via == ("bridge",)
    assert cfg.ca_dir.is_absolute()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.trust_domain = "x"  # type: ignore[misc]


def test_defaults(tmp_path: Path) -> None:
    cfg = parse_config(BASE, tmp_path)
    assert cfg.tokens.issuer == "spiffe://example.org" and cfg.tokens.leeway == 30.0
    assert cfg.agents["a"].identity_dir == tmp_path / ".mesh" / "identities" / "a"
    assert cfg.bridge.tls is True and cfg.audit.exporters == ("jsonl",)


@pytest.mark.parametrize(("doc", "message"), [
    ({"agents": {}}, "trust_domain: required"),
    (with_(trust_domain="Example.org"), "trust_domain: invalid trust domain"),
    (with_(agents={"a": {"address": "nohost"}}), "agents.a.address: expected host:port"),
    (with_(agents={"A_b": {"address": "127.0.0.1:1"}}), "agents.A_b: invalid agent name"),
    (with_(agents={"a": {"address": "127.0.0.1:1", "colour": "red"}}), "agents.a.colour: unknown key"),
    (with_(agents={"a": {"address": "127.0.0.1:1", "app": "nocolon"}}), "agents.a.app: expected module:Class"),
    (with_(agents={"a": {"address": "127.0.0.1:1", "replicas": ["svc:1"]}}), "agents.a.replicas: replicas are IPv4"),
    (with_(tokens={"ttl": "soon"}), "tokens.ttl: expected a duration"),
    (with_(tokens={"algorithms": ["none"]}), "'none' is never accepted"),
    (with_(tokens={"issuers": [{"iss": "https://idp"}]}), "exactly one of jwks_file or jwks_url"),
    (with_(policy=[{"name": "x", "action": "maybe"}]), "policy rule x: action: expected one of allow, deny"),
    (with_(policy=[{"name": "x", "methods": ["Invoke"]}]), "must be a full gRPC method name"),
    (with_(policy=[{"name": "x"}, {"name": "x"}]), "rule names must be unique"),
    (with_(rate_limits={"rules": [{"rate": "10/fortnight"}]}), "rate_limits.rules[0].rate: expected a rate"),
    (with_(rate_limits={"rules": [{"burst": 3}]}), "rate_limits.rules[0].rate: required"),
    (with_(rate_limits={"backend": "memcached://x"}), "rate_limits.backend"),
    (with_(audit={"exporters": ["kafka"]}), "audit.exporters: unknown exporter 'kafka'"),
    (with_(audit={"exporters": ["otlp"]}), "audit.otlp_endpoint: required"),
    (with_(bridge={"cors_origins": ["*"]}), "bridge.cors_origins: '*' is not allowed"),
    (with_(bridge={"max_body": "huge"}), "bridge.max_body: expected a size"),
    (with_(guard={"action": "shrug"}), "guard.action"),
    (with_(surprise=1), "surprise: unknown key"),
    ([1, 2], "expected a mapping"),
])
def test_errors_name_the_key(tmp_path: Path, doc: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc, tmp_path)
    assert message in err.value.message


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("trust_domain: [unclosed\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line 2, column 1: expected ',' or '\]'"):
        load_config(bad)


def test_units() -> None:
    assert parse_duration("15m") == 900 and parse_duration("500ms") == 0.5 and parse_duration(3) == 3.0
    assert parse_size("1MiB") == 1048576 and parse_size("64KiB") == 65536
    assert parse_rate("10/s") == 10 and parse_rate("120/m") == 2 and parse_rate("36/hour") == 0.01
    for bad in ("", "-1s", "1y", True):
        with pytest.raises(ConfigError):
            parse_duration(bad)  # type: ignore[arg-type]
    for bad_rate in ("0/s", "10", "x/s"):
        with pytest.raises(ConfigError):
            parse_rate(bad_rate)
