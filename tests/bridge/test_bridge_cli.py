"""``agentmesh bridge`` as a real process in front of the running mesh: HTTPS, its own node, quiet logs."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx
import pytest
from bridgekit import BridgeMesh, tls_context
from meshkit import free_port
from support import wait_bridge_ready

from agentmesh.cli.main import main

pytestmark = pytest.mark.asyncio(loop_scope="module")
ECHO = "/v1/agents/alpha/bridgetest.v1.Probe/Echo"


async def _bridge_process(mesh: BridgeMesh, *extra: str) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # finds the generated probe
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentmesh.cli.main", "bridge", "--config", str(mesh.config.source),
        "--listen", f"127.0.0.1:{port}", *extra, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    scheme = "http" if "--insecure-http" in extra else "https"
    return proc, f"{scheme}://localhost:{port}"




async def _stop(proc: asyncio.subprocess.Process) -> str:
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    return out.decode(errors="replace")




@pytest.mark.parametrize("extra", [(), ("--workers", "2"), ("--insecure-http",)])
async def test_bridge_command_serves_and_logs_no_secret(mesh: BridgeMesh, extra: tuple[str, ...]) -> None:
    proc, url = await _bridge_process(mesh, *extra)
    token = mesh.token("cli@example.org")
    try:
        verify = tls_context(mesh.bundle) if url.startswith("https") else False
        async with httpx.AsyncClient(base_url=url, verify=verify, timeout=10) as client:
            await wait_bridge_ready(client, proc)
            r = await client.post(ECHO + f"?access_token={token}", json={"name": "cli"},
                                  headers={"authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            assert r.json()["principal"] == "cli@example.org"
            assert (await client.post(ECHO, json={}, headers={"authorization": "Bearer x"})).status_code == 401
    finally:
        out = await _stop(proc)
    assert proc.returncode == 0, out
    assert token not in out and token.split(".")[2] not in out and "Bearer" not in out
    assert '"POST /v1' not in out  # uvicorn's own access log is off
    if "--insecure-http" in extra:
        assert "plain HTTP" in out


async def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str], mesh: BridgeMesh) -> None:
    assert main(["bridge", "--config", str(mesh.config.source), "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == "agentmesh: error: --workers: expected a number >= 1, got 0"
    assert main(["bridge", "--config", str(mesh.config.source), "--listen", "nowhere"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
    assert main(["bridge", "--config", str(mesh.root / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
