from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

sys.path.insert(0, str(Path(__file__).parent))  # bridgekit

from bridgekit import AGENT_MODULE, PROBE_MODULE, BridgeMesh, generate_probe, running_bridge

AGENTS: dict[str, dict[str, Any]] = {
    "alpha": {"roles": ["alpha"], "descriptors": [AGENT_MODULE, PROBE_MODULE]},
    "beta": {"roles": ["beta"], "descriptors": [AGENT_MODULE]},
    "down": {"roles": ["down"], "descriptors": [AGENT_MODULE]},  # configured, never started
    "mute": {"roles": ["mute"], "descriptors": [AGENT_MODULE]},  # a test may listen there and never answer
}
POLICY = [
    {"name": "no-describe-beta", "action": "deny", "to": ["beta"], "methods": ["/agentmesh.v1.Agent/Describe"],
     "via": ["bridge"]},
    {"name": "clients-via-bridge", "action": "allow", "roles": ["client"], "via": ["bridge"]},
]
SECTIONS: dict[str, Any] = {
    "policy": POLICY,
    "rate_limits": {"rules": [{"name": "limited", "match": {"principals": ["limited@example.org"]},
                               "rate": "1/m", "burst": 1}]},
    "bridge": {"cors_origins": ["https://app.example.com"], "max_body": "64KiB", "max_timeout": "5s",
               "default_timeout": "5s"},
}


@pytest.fixture(scope="session", autouse=True)
def probe_protos(tmp_path_factory: pytest.TempPathFactory) -> None:
    generate_probe(tmp_path_factory.mktemp("protos"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BridgeMesh]:
    async with running_bridge(tmp_path_factory.mktemp("mesh"), AGENTS, serve=["alpha", "beta"], **SECTIONS) as m:
        yield m
