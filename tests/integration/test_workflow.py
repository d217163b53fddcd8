"""The example document pipeline end to end over mTLS, and the denials the demo shows."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from support import DOCUMENT

from agentmesh.config import MeshConfig
from agentmesh.configfile import load_config
from agentmesh.interceptors.client import delegating
from agentmesh.runtime.agent import run_agent
from agentmesh.runtime.control import start_control
from agentmesh.runtime.node import MeshNode
from agentmesh.tokens import TokenAuthority
from agentmesh.v1 import agent_pb2, agent_pb2_grpc
from examples.workflow.prepare import prepare
from examples.workflow.summarizer import summarize
from examples.workflow.text import split_sections
from examples.workflow.validator import validate

REPO = Path(__file__).resolve().parents[2]


def test_summary_and_verdict_are_deterministic() -> None:
    source = "\n\n".join(body for _, body in split_sections(DOCUMENT))  # what the ingestor passes on
    summary = summarize(source)
    assert summary == summarize(source)
    assert summary.startswith("Agent meshes carry calls between autonomous agents.")
    report = validate(source, summary)
    assert report["verdict"] == "pass", report
    bad = validate(source, summary + " Contact admin@example.org, password: hunter2")
    assert bad["verdict"] == "fail" and bad["forbidden"] == ["credential", "email"]


class Workflow:
    def __init__(self, config: MeshConfig) -> None:
        self.config = config
        self.tasks = [asyncio.create_task(run_agent(config, name)) for name in config.agents]

    async def stop_agents(self) -> None:
        """Stops the agents; their audit sinks flush everything on the way out."""
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def workflow(tmp_path: Path) -> AsyncIterator[Workflow]:
    config = load_config(prepare(tmp_path))
    control = await start_control(config)
    sink = control.sink
    wf = Workflow(config)
    try:
        yield wf
    finally:
        await wf.stop_agents()
        await control.stop(0)
        sink.shutdown(2)


async def test_document_through_the_pipeline(workflow: Workflow) -> None:
    config = workflow.config
    authority = TokenAuthority.load(config.ca_dir, issuer=config.tokens.issuer)
    client = authority.issue(sub="alice@example.org", roles=["client"], audience="agentmesh", ttl=60)
    bridge = MeshNode(config, "bridge")
    await bridge.start(timeout=10)
    try:
        stub = bridge.stub("ingestor", agent_pb2_grpc.AgentStub)
        txn = await bridge.exchange(client, route="ingestor Invoke")  # the bridge is the first hop
        with delegating(txn.token):
            res = await stub.Invoke(agent_pb2.Task(id="doc-1", input=[agent_pb2.Part(text=DOCUMENT)]),
                                    wait_for_ready=True, timeout=10)
            assert res.status == agent_pb2.TASK_STATUS_COMPLETED
            assert res.output[0].text.startswith("Agent meshes carry calls between autonomous agents.")
            assert res.output[1].data["verdict"] == "pass"
            assert list(res.output[2].data["sections"]) == ["Agent meshes", "Tokens and policy", "Operations"]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await bridge.stub("validator", agent_pb2_grpc.AgentStub).Invoke(agent_pb2.Task(id="x"))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        viewer = authority.issue(sub="eve@example.org", roles=["viewer"], audience="agentmesh", ttl=60)
        with delegating((await bridge.exchange(viewer)).token), pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Invoke(agent_pb2.Task(id="doc-2", input=[agent_pb2.Part(text=DOCUMENT)]))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await bridge.close()
    # the audit trail holds one trace for the workflow: bridge -> ingestor -> summarizer -> validator
    await workflow.stop_agents()
    assert config.audit.jsonl_path is not None
    records = [json.loads(line) for line in config.audit.jsonl_path.read_text().splitlines()]
    allowed = [r for r in records if r["kind"] == "server" and r["attributes"].get("agentmesh.decision") == "allow"]
    assert {r["attributes"]["agentmesh.agent"] for r in allowed} == {"ingestor", "summarizer", "validator"}
    alice = [r for r in allowed if r["attributes"].get("enduser.id") == "alice@example.org"]
    trace = {r["trace_id"] for r in alice}
    assert len(trace) == 1, "the workflow call is one trace across all hops"
    txns = {r["attributes"].get("agentmesh.txn") for r in alice}
    assert txns == {txn.txn}, "and one transaction: the same transaction token on every hop"


@pytest.mark.slow  # a whole mesh under agentmesh up (~10 s): CI runs it; tests/lifecycle covers up fast
def test_up_starts_and_stops_cleanly(tmp_path: Path) -> None:
    config_path = prepare(tmp_path, join=["summarizer"])  # up joins it: the key is made by the summarizer
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "agentmesh.cli.main", "up", str(config_path), "--no-bridge"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "mesh up" in line or "agentmesh up:" in line:
                break
        assert any("mesh up" in x for x in lines), "".join(lines)
        table = "".join(lines)
        for name in ("control", "ingestor", "summarizer", "validator"):
            assert f"spiffe://example.org/agent/{name}" in table
        children = _children(proc.pid)
        assert len(children) == 4
        joined = tmp_path / ".mesh" / "identities" / "summarizer"
        assert (joined / "cert.pem").exists() and oct((joined / "key.pem").stat().st_mode & 0o777) == "0o600"
        assert "summarizer joined the mesh" in (tmp_path / ".mesh" / "logs" / "summarizer.log").read_text()
        cli = [sys.executable, "-m", "agentmesh.cli.main"]
        token = subprocess.run([*cli, "token", "issue", "--ca", str(tmp_path / ".mesh" / "ca"), "--sub", "alice",
                                "--role", "client"], capture_output=True, text=True, check=True).stdout.strip()
        body = json.dumps({"id": "cli-1", "input": [{"text": DOCUMENT}]})
        call = subprocess.run([*cli, "call", "ingestor", "Invoke", "--config", str(config_path), "--as", "bridge",
                               "--subject-token", "-", "--json", body], input=token + "\n",
                              capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
        assert call.returncode == 0, call.stderr
        assert '"verdict": "pass"' in call.stdout and token not in call.stdout + call.stderr
        denied = subprocess.run([*cli, "call", "validator", "Invoke", "--config", str(config_path), "--as", "bridge",
                                 "--subject-token", "-"], input=token + "\n", capture_output=True, text=True,
                                timeout=60, cwd=REPO, env=env)
        assert denied.returncode == 2 and "PERMISSION_DENIED" in denied.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "mesh stopped" in out
    assert not [pid for pid in children if _alive(pid)], "a child outlived agentmesh up"


@pytest.mark.slow  # agentmesh up and a child killed (~5 s): CI runs it
def test_up_reports_a_child_that_dies(tmp_path: Path) -> None:
    config_path = prepare(tmp_path)
    text = config_path.read_text().replace("examples.workflow.validator:Validator", "examples.workflow.nope:Gone")
    config_path.write_text(text)
    r = subprocess.run([sys.executable, "-m", "agentmesh.cli.main", "up", str(config_path), "--no-bridge"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 1
    assert "agent validator exited" in r.stderr and "cannot import module" in r.stderr


def _children(pid: int) -> list[int]:
    kids = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text() if proc.name.isdigit() else ""
        except OSError:
            continue
        if stat and int(stat.rpartition(")")[2].split()[1]) == pid:
            kids.append(int(proc.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
