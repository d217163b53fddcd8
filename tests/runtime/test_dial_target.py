"""What a channel dials (``runtime/servers.py``): the agent's addresses, less those whose server presented
a revoked certificate; none left is UNAVAILABLE. The probing itself runs against real servers in
``tests/lifecycle/test_kill_switch.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentmesh.configfile import parse_config
from agentmesh.errors import Unavailable
from agentmesh.runtime.servers import dial_target

CONFIG = parse_config({
    "trust_domain": "example.org",
    "agents": {
        "solo": {"address": "127.0.0.1:7101"},
        "pair": {"address": "127.0.0.1:7102", "replicas": ["127.0.0.1:7202"]},
    },
}, Path("."))


@pytest.mark.parametrize(("name", "refused", "target"), [
    ("solo", (), "127.0.0.1:7101"),
    ("solo", ("127.0.0.1:7102",), "127.0.0.1:7101"),  # another agent's address refused
    ("pair", (), "ipv4:127.0.0.1:7102,127.0.0.1:7202"),
    ("pair", ("127.0.0.1:7102",), "ipv4:127.0.0.1:7202"),
    ("pair", ("127.0.0.1:7202",), "ipv4:127.0.0.1:7102"),
])
def test_the_target_leaves_out_the_refused_addresses(name: str, refused: tuple[str, ...], target: str) -> None:
    assert dial_target(CONFIG, name, refused) == target


@pytest.mark.parametrize(("name", "refused"), [
    ("solo", ("127.0.0.1:7101",)),
    ("pair", ("127.0.0.1:7102", "127.0.0.1:7202")),
])
def test_an_agent_whose_every_address_is_refused_is_unavailable(name: str, refused: tuple[str, ...]) -> None:
    with pytest.raises(Unavailable, match=f"agent {name} presents a revoked certificate"):
        dial_target(CONFIG, name, refused)
