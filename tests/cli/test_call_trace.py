"""The trace id an operator is given finds the call in the audit log: ``agentmesh call`` prints it (stderr,
``-o json``, the error line of a refused call), the bridge returns it in ``traceparent`` on every
response, and ``agentmesh audit show --trace PREFIX`` shows that very trace. A real mesh on free ports,
the CLI and the bridge as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from meshkit import Mesh, free_port, running_mesh
from support import wait_bridge_ready

from agentmesh.cli.main import main

pytestmark = pytest.mark.asyncio(loop_scope="module")

AGENTS = {"alpha": {"roles": ["alpha"]}, "beta": {"roles": ["beta"]}}
POLICY = [
    {"name": "beta-calls-alpha", "action": "allow", "to": ["alpha"], "from": ["beta"]},
    {"name": "clients-via-bridge", "action": "allow", "to": ["alpha"], "roles": ["client"], "via": ["bridge"]},
]
AGENTMESH = [sys.executable, "-m", "agentmesh.cli.main"]
TRACE_LINE = re.compile(r"^agentmesh: trace ([0-9a-f]{32}); see it with: agentmesh audit show --trace ([0-9a-f]{8}) "
                        r"(\S+)$")
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path_factory.mktemp("mesh"), AGENTS, serve=["alpha"], policy=POLICY) as m:
        yield m


async def cli(*args: str, stdin: str = "") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*AGENTMESH, *args, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def audit_show(mesh: Mesh, capsys: pytest.CaptureFixture[str], prefix: str, *extra: str) -> str:
    mesh.flush()
    if mesh.control_sink is not None:
        mesh.control_sink.force_flush(5)
    capsys.readouterr()
    assert main(["audit", "show", "--trace", prefix, str(mesh.audit_path), *extra]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


async def test_call_prints_the_trace_that_audit_show_finds(mesh: Mesh, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await cli("call", "alpha", "Invoke", "--config", str(mesh.config.source), "--as", "beta",
                               "--json", '{"id": "t1", "input": [{"text": "hi"}]}')
    assert code == 0, err
    assert json.loads(out)["taskId"] == "t1"
    match = TRACE_LINE.match(err.strip())
    assert match and err.count("\n") == 1, err
    trace_id, prefix, path = match.groups()
    assert trace_id.startswith(prefix) and path == str(mesh.audit_path)
    tree = audit_show(mesh, capsys, prefix).splitlines()
    assert tree[0].startswith(f"trace {trace_id}")
    assert tree[1].startswith("└─ beta  agentmesh call alpha agentmesh.v1.Agent/Invoke  OK")
    assert tree[2].lstrip(" └├─").startswith("beta -> alpha  agentmesh.v1.Agent/Invoke  allow (beta-calls-alpha)  OK")


async def test_a_delegated_call_is_one_trace_with_its_exchange(mesh: Mesh, capsys: pytest.CaptureFixture[str]) -> None:
    token = mesh.client_token("carol@example.org")
    code, out, err = await cli("call", "alpha", "Invoke", "--config", str(mesh.config.source), "--as", "bridge",
                               "--subject-token", "-", "-o", "json", stdin=token + "\n")
    assert code == 0, err
    data = json.loads(out)
    assert data["responses"][0]["output"][0]["text"].startswith("alpha: peer=spiffe://example.org/agent/bridge "
                                                               "principal=carol@example.org")
    assert TRACE_LINE.match(err.strip()) and data["trace_id"] in err and token not in out + err
    tree = audit_show(mesh, capsys, data["trace_id"][:12])
    assert "bridge -> control  agentmesh.v1.TokenService/ExchangeTransactionToken" in tree
    assert "bridge -> alpha  agentmesh.v1.Agent/Invoke  allow (clients-via-bridge)  OK" in tree
    mesh.flush()
    spans = [json.loads(line) for line in mesh.audit_path.read_text().splitlines()]
    assert {s["service"] for s in spans if s["trace_id"] == data["trace_id"]} >= {"bridge", "control", "alpha"}


async def test_a_refused_call_names_its_trace_in_the_error_line(mesh: Mesh,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await cli("call", "alpha", "Invoke", "--config", str(mesh.config.source), "--as", "bridge")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    match = re.fullmatch(r"agentmesh: error: PERMISSION_DENIED: no rule allows .* \(trace ([0-9a-f]{32})\)", lines[0])
    assert match, lines[0]
    tree = audit_show(mesh, capsys, match.group(1)[:8])
    assert "bridge -> alpha  agentmesh.v1.Agent/Invoke  deny  PERMISSION_DENIED" in tree


async def test_audit_show_json_for_one_trace(mesh: Mesh, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await cli("call", "alpha", "Describe", "--config", str(mesh.config.source), "--as", "beta")
    assert code == 0, err
    match = TRACE_LINE.match(err.strip())
    assert match
    (trace,) = json.loads(audit_show(mesh, capsys, match.group(2), "-o", "json"))
    assert trace["trace_id"] == match.group(1)
    assert {s["kind"] for s in trace["spans"]} == {"internal", "client", "server"}


# ----------------------------------------------------------------------------- the bridge returns the trace


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bridge(mesh: Mesh) -> AsyncIterator[tuple[httpx.AsyncClient, asyncio.subprocess.Process]]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *AGENTMESH, "bridge", "--config", str(mesh.config.source), "--listen", f"127.0.0.1:{port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ})
    tls = ssl.create_default_context(cafile=str(mesh.root / "identities" / "bridge" / "bundle.pem"))
    async with httpx.AsyncClient(base_url=f"https://localhost:{port}", verify=tls, timeout=10) as client:
        try:
            await wait_bridge_ready(client, proc)
            yield client, proc
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
            await asyncio.wait_for(proc.communicate(), 30)




async def test_every_bridge_response_but_a_probe_that_succeeded_carries_traceparent(
        mesh: Mesh, bridge: tuple[httpx.AsyncClient, asyncio.subprocess.Process],
        capsys: pytest.CaptureFixture[str]) -> None:
    client, proc = bridge
    route = "/v1/agents/alpha/agentmesh.v1.Agent/Invoke"
    answers = [await client.get("/openapi.json"), await client.get("/nowhere"),
               await client.post(route, json={}),  # no token: 401
               await client.post(route, json={"id": "b1"},
                                 headers={"authorization": f"Bearer {mesh.client_token('dave@example.org')}"})]
    assert [r.status_code for r in answers] == [200, 404, 401, 200]
    ids = []
    for r in answers:
        match = TRACEPARENT.match(r.headers.get("traceparent", ""))
        assert match, (r.status_code, r.headers)
        ids.append(match.group(1))
    assert len(set(ids)) == 4  # a new trace for each request that brings none
    probe = await client.get("/healthz")  # but a probe that succeeds: no span (audit.trace_housekeeping)
    assert probe.status_code == 200 and "traceparent" not in probe.headers and probe.headers["x-request-id"]
    ours = "4bf92f3577b34da6a3ce929d0e0e4736"
    continued = await client.get("/openapi.json", headers={"traceparent": f"00-{ours}-00f067aa0ba902b7-01"})
    match = TRACEPARENT.match(continued.headers["traceparent"])
    assert match and match.group(1) == ours and match.group(2) != "00f067aa0ba902b7"  # the bridge's own span
    proc.send_signal(signal.SIGINT)  # its spans are written by the time it has stopped
    await asyncio.wait_for(proc.communicate(), 30)
    tree = audit_show(mesh, capsys, ids[3][:8])
    assert f"trace {ids[3]}" in tree
    assert "dave@example.org -> bridge  POST /v1/agents/alpha/agentmesh.v1.Agent/Invoke" in tree
    assert "bridge -> alpha  agentmesh.v1.Agent/Invoke  allow (clients-via-bridge)  OK" in tree
