"""``audit.required`` names the exporter that must work; rotation and the OTLP timeout are validated once,
in AuditConfig, with one line naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentmesh.config import AuditConfig
from agentmesh.configfile import parse_config
from agentmesh.errors import ConfigError

BASE: dict[str, Any] = {"trust_domain": "example.org", "agents": {"a": {"address": "127.0.0.1:7000"}}}
OTLP = "http://127.0.0.1:4317"


def audit(tmp_path: Path, **section: Any) -> AuditConfig:
    return parse_config({**BASE, "audit": section}, tmp_path).audit


@pytest.mark.parametrize(("section", "required"), [
    ({}, ()),
    ({"required": False}, ()),
    ({"required": True}, ("jsonl",)),
    ({"required": True, "exporters": ["jsonl", "otlp"], "otlp_endpoint": OTLP}, ("jsonl",)),  # true: the JSONL log
    ({"required": True, "exporters": ["otlp", "console"], "otlp_endpoint": OTLP}, ("otlp", "console")),  # else all
    ({"required": "otlp", "exporters": ["jsonl", "otlp"], "otlp_endpoint": OTLP}, ("otlp",)),
    ({"required": "console", "exporters": ["console"]}, ("console",)),
])
def test_required_names_the_exporters_that_must_work(tmp_path: Path, section: dict[str, Any],
                                                     required: tuple[str, ...]) -> None:
    cfg = audit(tmp_path, **section)
    assert cfg.required_exporters == required
    assert cfg.required is bool(required)


@pytest.mark.parametrize(("section", "message"), [
    ({"required": "otlp"}, r"^audit\.required: 'otlp' is not an enabled exporter \(audit\.exporters: jsonl\)$"),
    ({"required": "jsnol"}, r"^audit\.required: 'jsnol' is not an enabled exporter .* \(did you mean 'jsonl'\?\)$"),
    ({"required": "none", "exporters": ["none"]}, r"^audit\.required: 'none' is not an enabled exporter"),
    ({"required": True, "exporters": ["none"]}, r"^audit\.required: true, but audit\.exporters enables no exporter$"),
    ({"required": ["jsonl"]}, r"^audit\.required: expected true, false or an exporter's name, got \['jsonl'\]$"),
    ({"required": 1}, r"^audit\.required: expected true, false or an exporter's name, got 1$"),
    ({"jsonl_rotate_bytes": "lots"}, r"^audit\.jsonl_rotate_bytes: expected a size"),
    ({"jsonl_rotate_bytes": -1}, r"^audit\.jsonl_rotate_bytes: must be positive"),
    ({"jsonl_rotate_seconds": "soon"}, r"^audit\.jsonl_rotate_seconds: expected a duration"),
    ({"jsonl_keep": -2}, r"^audit\.jsonl_keep: expected an integer >= 0"),
    ({"otlp_timeout": 0}, r"^audit\.otlp_timeout: expected a duration > 0"),
])
def test_a_bad_audit_section_is_one_clear_line(tmp_path: Path, section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        audit(tmp_path, **section)


def test_rotation_settings_parse_and_default(tmp_path: Path) -> None:
    cfg = audit(tmp_path)
    assert (cfg.jsonl_rotate_bytes, cfg.jsonl_rotate_seconds, cfg.jsonl_keep) == (64 * 1024 * 1024, 0.0, 0)
    cfg = audit(tmp_path, jsonl_rotate_bytes="1MiB", jsonl_rotate_seconds="1h", jsonl_keep=24, otlp_timeout="2s")
    assert (cfg.jsonl_rotate_bytes, cfg.jsonl_rotate_seconds, cfg.jsonl_keep, cfg.otlp_timeout) == (
        1024 * 1024, 3600.0, 24, 2.0)
    assert audit(tmp_path, jsonl_rotate_bytes=0).jsonl_rotate_bytes == 0  # never by size


@pytest.mark.parametrize(("kw", "message"), [
    ({"required_exporter": "jsonl"}, r"^audit\.required: an exporter is named but required is false$"),
    ({"jsonl_rotate_bytes": -1}, r"^audit\.jsonl_rotate_bytes: expected an integer >= 0, got -1$"),
    ({"jsonl_rotate_seconds": float("nan")}, r"^audit\.jsonl_rotate_seconds: expected a duration >= 0"),
    ({"jsonl_keep": True}, r"^audit\.jsonl_keep: expected an integer >= 0, got True$"),
    ({"otlp_timeout": -1.0}, r"^audit\.otlp_timeout: expected a duration > 0"),
])
def test_audit_config_validates_itself(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AuditConfig(**kw)

