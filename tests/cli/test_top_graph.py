"""``agentmesh top --once`` and ``agentmesh graph`` on a running mesh: the edges its members' endpoints
report, over real HTTP, with their traffic, errors and denials."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from meshkit import Mesh, free_port, running_mesh
from promkit import scrape_until, value
from support import task

from agentmesh.cli.main import main
from agentmesh.v1 import agent_pb2_grpc

AGENTS = {"ingestor": {"roles": ["ingestor"]}, "summarizer": {"roles": ["summarizer"]}}
MEMBERS = ("control", "ingestor", "summarizer", "bridge")
POLICY = [{"name": "ingestor-to-summarizer", "action": "allow", "to": ["summarizer"], "from": ["ingestor"]}]


@pytest.fixture
async def mesh(tmp_path: Path):  # type: ignore[no-untyped-def]
    # fixed free ports, so that `top mesh.yaml` finds every endpoint from the config alone
    metrics = {"addresses": {name: f"127.0.0.1:{free_port()}" for name in MEMBERS}}
    async with running_mesh(tmp_path, AGENTS, policy=POLICY, metrics=metrics) as m:
        for _ in range(4):
            await m.nodes["ingestor"].stub("summarizer", agent_pb2_grpc.AgentStub).Invoke(task(), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError):  # no rule lets the summarizer call the ingestor
            await m.nodes["summarizer"].stub("ingestor", agent_pb2_grpc.AgentStub).Invoke(task(), timeout=10)
        for name, total in (("summarizer", 4), ("ingestor", 1)):  # recorded once their spans ended
            endpoint = m.nodes[name].metrics_endpoint
            assert endpoint is not None
            await scrape_until(endpoint.url, lambda t, n=total, d=name: value(t, "agentmesh_server_requests_total",
                                                                               destination=d) >= n)
        yield m


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = await asyncio.to_thread(main, list(argv))
    return code, capsys.readouterr().out


def config_path(mesh: Mesh) -> str:
    assert mesh.config.source is not None
    return str(mesh.config.source)


async def test_top_once_shows_one_row_per_edge(mesh: Mesh, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = await run(capsys, "top", config_path(mesh), "--once")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["SOURCE", "DESTINATION", "RPS", "REQS", "ERR", "DENY", "P50", "P99"]
    rows = {tuple(line.split()[:2]): line.split() for line in lines[1:3]}
    assert rows[("ingestor", "summarizer")][3:6] == ["4", "0.0%", "0.0%"]
    assert rows[("summarizer", "ingestor")][3:6] == ["1", "0.0%", "100.0%"]
    assert "2 edge(s), since the members started" in out
    assert "control" not in "\n".join(lines[1:3])  # housekeeping is left out by default

    code, out = await run(capsys, "top", config_path(mesh), "--once", "-o", "json")
    data = json.loads(out)
    edges = {(e["source"], e["destination"]): e for e in data["edges"]}
    assert set(edges) == {("ingestor", "summarizer"), ("summarizer", "ingestor")}
    assert edges[("ingestor", "summarizer")]["requests"] == 4 and edges[("ingestor", "summarizer")]["rps"] > 0
    assert edges[("ingestor", "summarizer")]["p50_ms"] > 0 and edges[("summarizer", "ingestor")]["denial_rate"] == 1
    assert sorted(data["members"]) == sorted(MEMBERS) and data["unreachable"] == {}

    code, out = await run(capsys, "top", config_path(mesh), "--once", "--housekeeping", "-o", "json")
    housekeeping = {(e["source"], e["destination"]) for e in json.loads(out)["edges"]}
    assert {("ingestor", "control"), ("summarizer", "control"), ("bridge", "control")} <= housekeeping


async def test_top_reports_an_endpoint_that_does_not_answer(mesh: Mesh, capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    endpoint = mesh.nodes["summarizer"].metrics_endpoint
    assert endpoint is not None
    code, out = await run(capsys, "top", "--once", "--endpoint", endpoint.address, "--endpoint", dead)
    assert code == 0 and f"unreachable: http://{dead}/metrics" in out
    assert "ingestor    summarizer" in out  # what the summarizer saw is still shown
    code, _ = await run(capsys, "top", "--once", "--endpoint", dead)
    assert code == 1


@pytest.mark.parametrize("fmt", ["dot", "mermaid", "json"])
async def test_graph_draws_members_and_edges(mesh: Mesh, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    code, out = await run(capsys, "graph", config_path(mesh), "-o", fmt)
    assert code == 0
    if fmt == "json":
        data: dict[str, Any] = json.loads(out)
        assert data["members"][:4] == list(MEMBERS)
        assert {(e["source"], e["destination"]) for e in data["edges"]} == {("ingestor", "summarizer"),
                                                                           ("summarizer", "ingestor")}
    elif fmt == "dot":
        assert out.startswith("digraph agentmesh {") and out.rstrip().endswith("}")
        assert '"ingestor" -> "summarizer" [label="' in out and "rps" in out
        assert '"summarizer" -> "ingestor" [label="' in out and "100% denied" in out and "color=orange" in out
        assert all(f'"{m}";' in out for m in MEMBERS)
    else:
        assert out.startswith("flowchart LR")
        ids = {line.split("[")[0].strip(): line.split('"')[1] for line in out.splitlines() if '["' in line}
        by_name = {v: k for k, v in ids.items()}
        assert f'{by_name["ingestor"]} -->|"' in out and "100% denied" in out
