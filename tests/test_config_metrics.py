"""The ``metrics`` section (each member's Prometheus endpoint) and ``audit.trace_housekeeping``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentmesh.audit.prom import METRICS_ADDRESS_ENV, metrics_address
from agentmesh.config import MetricsConfig
from agentmesh.configfile import parse_config
from agentmesh.errors import ConfigError

BASE: dict[str, Any] = {"trust_domain": "example.org", "agents": {"ingestor": {"address": "127.0.0.1:7101"},
                                                                  "summarizer": {"address": "127.0.0.1:7102"}}}


def parse(**sections: Any):  # type: ignore[no-untyped-def]
    return parse_config({**BASE, **sections}, Path("/tmp"))


def test_off_unless_configured() -> None:
    cfg = parse()
    assert cfg.metrics == MetricsConfig() and cfg.audit.trace_housekeeping is False
    assert [cfg.metrics_address(n) for n in cfg.members()] == [None] * 4


def test_a_port_base_numbers_the_members_and_addresses_override_it() -> None:
    cfg = parse(metrics={"port_base": 9460, "addresses": {"summarizer": "0.0.0.0:9999"}})
    assert cfg.members() == ("control", "ingestor", "summarizer", "bridge")
    assert [cfg.metrics_address(n) for n in cfg.members()] == [
        "127.0.0.1:9460", "127.0.0.1:9461", "0.0.0.0:9999", "127.0.0.1:9463"]
    assert cfg.metrics_address("stranger") is None
    assert parse(metrics={"addresses": {"bridge": "127.0.0.1:0"}}).metrics_address("ingestor") is None


@pytest.mark.parametrize(("metrics", "message"), [
    ({"adresses": {}}, "metrics.adresses: unknown key (did you mean 'addresses'?)"),
    ({"addresses": {"ingestr": "127.0.0.1:1"}}, "metrics.addresses.ingestr: not a member of this mesh (did you mean"),
    ({"addresses": {"ingestor": "9464"}}, "metrics.addresses.ingestor: expected host:port"),
    ({"port_base": 0}, "metrics.port_base: expected an integer from 1 to 65535"),
    ({"port_base": 65534}, "metrics.port_base: 65534 + 3 members is past port 65535"),
])
def test_mistakes_name_the_key(metrics: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(metrics=metrics)
    assert e.value.message.startswith(message)


def test_the_switch_and_the_environment() -> None:
    cfg = parse(audit={"trace_housekeeping": True}, metrics={"port_base": 9460})
    assert cfg.audit.trace_housekeeping is True
    with pytest.raises(ConfigError, match=r"audit\.trace_housekeeping: expected true or false"):
        parse(audit={"trace_housekeeping": "yes"})
    assert metrics_address(cfg, "ingestor") == "127.0.0.1:9461"
    with pytest.MonkeyPatch.context() as mp:  # what `agentmesh up` hands each member it starts
        mp.setenv(METRICS_ADDRESS_ENV, "127.0.0.1:19000")
        assert metrics_address(cfg, "ingestor") == "127.0.0.1:19000"
