"""Property-based testing of the bridge against its own /openapi.json (schemathesis, real mesh, HTTPS).

Checks: no 5xx, status codes / content types / headers / response bodies as documented, schema-
violating requests refused, and every operation refusing calls without a token (ignored_auth).
Not checked: positive_data_acceptance, because a JSON Schema pattern cannot bound the range of
an integer written as a string, so some schema-valid digit strings are (rightly) out of range.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from bridgekit import AGENT_MODULE, PROBE_MODULE, BridgeMesh, running_bridge

pytest.importorskip("schemathesis")
pytestmark = pytest.mark.asyncio(loop_scope="module")

AGENTS: dict[str, dict[str, Any]] = {
    "alpha": {"roles": ["alpha"], "descriptors": [AGENT_MODULE, PROBE_MODULE]},
    "beta": {"roles": ["beta"], "descriptors": [AGENT_MODULE]},
}
POLICY = [
    {"name": "no-describe-beta", "action": "deny", "to": ["beta"], "methods": ["/agentmesh.v1.Agent/Describe"],
     "via": ["bridge"]},
    {"name": "clients-via-bridge", "action": "allow", "roles": ["client"], "via": ["bridge"]},
]
# the probe's failure, sleep and endless-stream methods answer 5xx or take long on purpose
EXCLUDED = r"Probe/(Fail|Slow|Ticks)$"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def st_mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BridgeMesh]:
    async with running_bridge(tmp_path_factory.mktemp("st"), AGENTS, serve=["alpha", "beta"], policy=POLICY,
                              bridge={"max_timeout": "2s", "default_timeout": "2s"}) as m:
        yield m


@pytest.mark.slow  # a long run: under CI=true (see tests/conftest.py)
async def test_schemathesis_finds_no_failure(st_mesh: BridgeMesh) -> None:
    args = [
        "run", st_mesh.url + "/openapi.json", "--tls-verify", str(st_mesh.bundle),
        "-H", f"Authorization: Bearer {st_mesh.token()}",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--phases", "fuzzing", "--max-examples", "20", "--seed", "7", "--workers", "1",
        "--exclude-path-regex", EXCLUDED, "--request-timeout", "5", "--no-color",
    ]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert "Selected: 17/20" in text, text[-3000:]


async def test_every_documented_agent_operation_refuses_calls_without_a_token(st_mesh: BridgeMesh) -> None:
    spec = (await st_mesh.client.get("/openapi.json")).json()
    calls = 0
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if op.get("security") == []:
                continue
            url = path.replace("{", "").replace("}", "")
            for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": "Basic x"}):
                r = await st_mesh.client.request(method.upper(), url, json={}, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer ")
                calls += 1
    assert calls >= 3 * 17
