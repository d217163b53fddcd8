"""Joining without shipping keys: a real `agentmesh agent NAME --join TOKEN` process whose config has no
CA directory makes its key, joins with a one-time token, serves, and is refused once revoked; a token
works once; a CSR for another member and a revoked member's join are refused and audited."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from meshkit import Mesh, free_port, running_mesh
from support import TD, task

from agentmesh.configfile import load_config
from agentmesh.errors import PKIError, Unavailable
from agentmesh.identity import SpiffeId
from agentmesh.pki.certs import new_key
from agentmesh.pki.csr import make_csr
from agentmesh.pki.join import JoinTokens
from agentmesh.runtime.join import join
from agentmesh.v1 import agent_pb2_grpc, control_pb2, control_pb2_grpc

TESTS = Path(__file__).resolve().parent.parent
AGENTS = {"ingestor": {"roles": ["ingestor"]},
          "newbie": {"roles": ["worker"], "app": "meshkit:RelayAgent"}}
POLICY = [
    {"name": "bridge-calls-newbie", "action": "allow", "to": ["newbie"], "from": ["bridge"]},
    {"name": "newbie-calls-ingestor", "action": "allow", "to": ["ingestor"], "from": ["newbie"]},
]


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    control = {"address": f"127.0.0.1:{free_port()}", "join_address": f"127.0.0.1:{free_port()}"}
    async with running_mesh(tmp_path, AGENTS, policy=POLICY, control=control,
                            serve=["ingestor", "bridge"]) as m:
        yield m


def member_config(mesh: Mesh) -> Path:
    """The mesh file as an agent machine has it: no CA directory anywhere near it."""
    assert mesh.config.source is not None
    doc = yaml.safe_load(mesh.config.source.read_text())
    doc["ca"] = str(mesh.root / "no-ca-here")
    doc["identities"] = str(mesh.root / "identities")
    path = mesh.root / "member.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def fresh_member_dir(mesh: Mesh, name: str) -> Path:
    """Only the public trust bundle is shipped to the member."""
    d = mesh.root / "identities" / name
    for f in ("cert.pem", "key.pem"):
        (d / f).unlink(missing_ok=True)
    return d


@contextlib.contextmanager
def agent_process(config: Path, name: str, token: str) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "agentmesh.cli.main", "agent", name, "--config", str(config),
                             "--join", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdin is not None
    proc.stdin.write(token + "\n")  # never on the command line, where `ps` would show it
    proc.stdin.close()
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_line(proc: subprocess.Popen[str], needle: str) -> str:
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        if not line:
            raise AssertionError(f"process ended: {proc.stderr.read() if proc.stderr else ''}")
        if needle in line:
            return line


async def test_a_member_joins_with_a_token_serves_and_is_refused_once_revoked(mesh: Mesh) -> None:
    token = JoinTokens(mesh.config.ca_dir).create("newbie")
    identity = fresh_member_dir(mesh, "newbie")
    with agent_process(member_config(mesh), "newbie", token) as proc:
        assert "newbie joined the mesh" in await wait_line(proc, "joined")
        await wait_line(proc, "serving on")
        assert stat.S_IMODE(os.stat(identity / "key.pem").st_mode) == 0o600
        stub = mesh.nodes["bridge"].stub("newbie", agent_pb2_grpc.AgentStub)
        res = await stub.Invoke(task(), timeout=5)
        assert res.output[0].text.startswith("newbie: peer=spiffe://example.org/agent/bridge")
        # the key was born there: the CA never held it; the certificate is the one the CA recorded
        assert [e.name for e in mesh.ca.entries()].count("newbie") == 2

        mesh.ca.revoke("newbie")  # the operator revokes it by name
        await mesh.nodes["bridge"].wait_for_trust(lambda t: "newbie" in t.revoked_members)
        with pytest.raises(Unavailable, match="newbie is revoked"):  # no traffic TO a revoked agent
            await stub.Invoke(task(), timeout=5)


async def test_a_join_token_works_once(mesh: Mesh) -> None:
    token = JoinTokens(mesh.config.ca_dir).create("newbie")
    config = load_config(member_config(mesh))
    fresh_member_dir(mesh, "newbie")
    assert await join(config, "newbie", token) > 0
    with pytest.raises(PKIError, match="used"):
        await join(config, "newbie", token)
    with pytest.raises(PKIError, match="refused"):
        await join(config, "newbie", token.replace(token[-4:], "AAAA"))


async def raw_join(mesh: Mesh, token: str, csr: bytes) -> grpc.aio.AioRpcError:
    creds = grpc.ssl_channel_credentials(root_certificates=mesh.ca.bundle)
    assert mesh.config.control.join_address is not None
    async with grpc.aio.secure_channel(mesh.config.control.join_address, creds,
                                       options=[("grpc.ssl_target_name_override", "control")]) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await control_pb2_grpc.JoinServiceStub(ch).Join(control_pb2.JoinRequest(join_token=token, csr_pem=csr),
                                                            timeout=5)
    return err.value


async def test_a_join_for_another_member_or_a_revoked_one_is_refused_and_audited(mesh: Mesh) -> None:
    tokens = JoinTokens(mesh.config.ca_dir)
    kept = tokens.create("newbie")
    other = await raw_join(mesh, kept, make_csr(new_key(), SpiffeId.for_agent(TD, "ingestor")))
    assert other.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED)
    assert tokens.check(kept).name == "newbie"  # a refused request does not spend the token
    foreign = make_csr(new_key(), SpiffeId.for_agent("evil.org", "newbie"))
    ca_key = await raw_join(mesh, tokens.create("newbie"), foreign)
    assert ca_key.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED)
    pending = tokens.create("newbie")
    mesh.ca.block("newbie", reason="test")
    blocked = await raw_join(mesh, pending, make_csr(new_key(), SpiffeId.for_agent(TD, "newbie")))
    assert blocked.code() == grpc.StatusCode.PERMISSION_DENIED and "revoked" in (blocked.details() or "")
    mesh.flush()
    assert mesh.control_sink is not None
    mesh.control_sink.force_flush(5)
    spans = [json.loads(line) for line in mesh.audit_path.read_text().splitlines()]
    joins = [s for s in spans if s["name"].endswith("JoinService/Join")]
    assert len(joins) == 3, [s["name"] for s in spans]
    assert all(s["attributes"]["agentmesh.cert.member"] == "newbie" for s in joins)  # who tried, by token
    assert pending not in mesh.audit_path.read_text()  # the token never reaches the audit log


async def test_nobody_joins_as_the_control_plane(mesh: Mesh) -> None:
    token = JoinTokens(mesh.config.ca_dir).create("control")
    refused = await raw_join(mesh, token, make_csr(new_key(), SpiffeId.for_agent(TD, "control")))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED and "never joins" in (refused.details() or "")
