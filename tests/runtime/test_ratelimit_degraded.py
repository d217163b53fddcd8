"""A call let through because the rate-limit backend is down (``failure_mode: open``) says so on its
audit span, and shows no count it could not know; the same call with the backend up shows the count."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from meshkit import Mesh, free_port, running_mesh
from support import task

from agentmesh.v1 import agent_pb2_grpc

POLICY = [{"name": "bridge-calls-a", "action": "allow", "to": ["a"], "from": ["bridge"]}]
RULES = [{"name": "everyone", "match": {"to": ["a"]}, "rate": "100/s", "burst": 10}]


def server_span(mesh: Mesh) -> dict[str, Any]:
    mesh.flush()
    records = [json.loads(line) for line in mesh.audit_path.read_text().splitlines()]
    return next(r for r in records if r["kind"] == "server" and r["service"] == "a")


@pytest.mark.parametrize("backend", ["memory", "dead-redis"])
async def test_a_degraded_limiter_leaves_its_trace(tmp_path: Path, backend: str) -> None:
    url = "memory" if backend == "memory" else f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    limits = {"backend": url, "failure_mode": "open", "rules": RULES}
    async with running_mesh(tmp_path, {"a": {"roles": ["a"]}}, policy=POLICY, rate_limits=limits) as mesh:
        await mesh.nodes["bridge"].stub("a", agent_pb2_grpc.AgentStub).Invoke(task(), timeout=10)
        attrs = server_span(mesh)["attributes"]
    if backend == "memory":
        assert attrs["agentmesh.ratelimit.remaining"] == 9 and "agentmesh.ratelimit.degraded" not in attrs
    else:
        assert attrs["agentmesh.ratelimit.degraded"] is True and "agentmesh.ratelimit.remaining" not in attrs


@pytest.mark.parametrize("backend", ["memory", "dead-redis"])
async def test_a_limiter_failing_closed_is_a_refusal_on_the_span(tmp_path: Path, backend: str) -> None:
    """With ``failure_mode: closed`` a dead backend refuses the call: UNAVAILABLE, recorded as the mesh's
    refusal (decision deny, the ratelimit stage), not as a call the policy allowed that then failed."""
    url = "memory" if backend == "memory" else f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    limits = {"backend": url, "failure_mode": "closed", "rules": RULES}
    async with running_mesh(tmp_path, {"a": {"roles": ["a"]}}, policy=POLICY, rate_limits=limits) as mesh:
        stub = mesh.nodes["bridge"].stub("a", agent_pb2_grpc.AgentStub)
        if backend == "memory":
            await stub.Invoke(task(), timeout=10)
        else:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Invoke(task(), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        span = server_span(mesh)
    denied = [e["attributes"]["stage"] for e in span["events"] if e["name"] == "agentmesh.denied"]
    if backend == "memory":
        assert span["attributes"]["agentmesh.decision"] == "allow" and denied == []
    else:
        assert span["attributes"]["agentmesh.decision"] == "deny" and denied == ["ratelimit"]
