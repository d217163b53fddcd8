"""``agentmesh up`` turns every member's metrics endpoint on, prints where, and keeps each on its address.

For a mesh file without a ``metrics`` section, ``up`` binds one free loopback port per member itself and hands
the listening socket to the child (and to each restart of it); the table it prints shows the addresses, the
run's run.json records them, and ``agentmesh top FILE`` / ``agentmesh status`` find them there. The processes
are real (tests/lifecycle/upkit.py): the calls go bridge -> front -> middle -> back over mutual TLS.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter
from upkit import AGENTS, Bridge, Up, child_pids, cli, wait_until, write_up_mesh

from agentmesh.audit.prom import METRICS_ADDRESS_ENV, METRICS_FD_ENV, MetricsEndpoint
from agentmesh.configfile import parse_config
from agentmesh.errors import ConfigError
from agentmesh.runtime.children import listen_metrics
from agentmesh.runtime.runlogs import latest_run, read_state
from agentmesh.runtime.supervision import listen_ports, metrics_addresses

MEMBERS = ("control", *AGENTS, "bridge")


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as res:
        return str(res.read().decode())


def _table(up: Up) -> dict[str, str]:
    """Member -> METRICS column of the table ``up`` printed at start."""
    (head,) = [line for line in up.lines if line.startswith("NAME ")]
    col = head.index("METRICS")
    start = up.lines.index(head) + 1
    return {line.split()[0]: line[col:].split()[0] for line in up.lines[start:start + len(MEMBERS)]}


def _served(text: str, destination: str, source: str) -> float:
    """The calls ``destination`` served from ``source`` (all methods, codes, decisions), from its exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("agentmesh_server_requests_total{") and f'destination="{destination}"' in line \
                and f'source="{source}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _start_time(text: str) -> float:
    (value,) = re.findall(r"^agentmesh_member_start_time_seconds\{[^}]*\} (\S+)$", text, re.M)
    return float(value)


def _start(started: list[Up], tmp_path: Path) -> tuple[Up, Path, dict[str, str]]:
    config = write_up_mesh(tmp_path)  # no metrics section
    up = Up(config)
    started.append(up)
    up.wait_up(60)
    return up, config, _table(up)


@pytest.mark.slow  # real `up` processes, ~15 s: CI runs it (make test stays under 5 min)
async def test_up_serves_each_members_metrics_on_a_port_it_prints(tmp_path: Path, started: list[Up]) -> None:
    up, config, table = _start(started, tmp_path)
    assert set(table) == set(MEMBERS)
    for name, address in table.items():
        assert re.fullmatch(r"127\.0\.0\.1:\d+", address) and not address.endswith(":0"), (name, address)
    assert len(set(table.values())) == len(MEMBERS)
    assert f"live view: agentmesh top {config}" in up.lines

    bridge = Bridge(config)
    async with bridge.client() as client:
        assert (await bridge.invoke(client)).status_code == 200
    texts = {name: _scrape(address) for name, address in table.items()}
    assert _served(texts["front"], "front", "bridge") == 1
    assert _served(texts["middle"], "middle", "front") == 1
    assert _served(texts["back"], "back", "middle") == 1
    assert _served(texts["control"], "control", "front") >= 1  # its token (housekeeping, counted here)
    assert re.search(r'^agentmesh_client_requests_total\{[^}]*destination="front"[^}]*grpc_code="OK"[^}]*\} 1\.0$',
                     texts["bridge"], re.M)
    for name, text in texts.items():  # each endpoint is its own member's
        assert f'agentmesh_member_start_time_seconds{{member="{name}"}}' in text

    state = read_state(latest_run(tmp_path / "logs"))  # type: ignore[arg-type]
    assert {c["name"]: c["metrics"] for c in state["children"]} == table

    top = cli("top", str(config), "--once", "-o", "json")  # finds the endpoints in run.json
    assert top.returncode == 0, top.stderr
    frame = json.loads(top.stdout)
    assert frame["unreachable"] == {} and set(frame["members"]) == set(MEMBERS)
    edges = {(e["source"], e["destination"]): e["requests"] for e in frame["edges"]}
    hops = {("bridge", "front"): 1, ("front", "middle"): 1, ("middle", "back"): 1}
    assert {k: v for k, v in edges.items() if k in hops} == hops
    assert {d for _, d in set(edges) - set(hops)} <= {"control"}  # e.g. the bridge's token exchange

    status = cli("status", "--config", str(config), "-o", "json")
    assert status.returncode == 0, status.stdout + status.stderr
    members = {m["name"]: m for m in json.loads(status.stdout)["members"]}
    assert {n: m["metrics"] for n, m in members.items()} == table
    assert members["front"]["token_note"] == "metrics"  # read from the endpoint up opened

    assert up.stop() == 0
    assert cli("top", str(config), "--once").returncode != 0  # a stopped run's addresses are not used


@pytest.mark.slow  # a restart on top of a start
async def test_a_restarted_child_is_back_on_the_same_metrics_address(tmp_path: Path, started: list[Up]) -> None:
    up, config, table = _start(started, tmp_path)
    bridge = Bridge(config)
    async with bridge.client() as client:
        assert (await bridge.invoke(client)).status_code == 200
        before = _scrape(table["middle"])
        assert _served(before, "middle", "front") == 1
        os.kill(child_pids(tmp_path)["middle"], signal.SIGKILL)
        up.wait_for(lambda line: "agent middle is healthy again" in line)
        wait_until(lambda: (s := _scrape(table["middle"])) != "" and _start_time(s) > _start_time(before),
                   what="the restarted middle serving its metrics")
        deadline = time.monotonic() + 20  # the callers' channels reconnect to the new process
        while (r := await bridge.invoke(client, task_id="t2")).status_code != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert r.status_code == 200, r.text
    after = _scrape(table["middle"])  # the same address, the new process: counted since its start
    assert _start_time(after) > _start_time(before) and _served(after, "middle", "front") == 1
    state = read_state(latest_run(tmp_path / "logs"))  # type: ignore[arg-type]
    (middle,) = [c for c in state["children"] if c["name"] == "middle"]
    assert middle["metrics"] == table["middle"] and middle["restarts"] == 1
    assert up.stop() == 0


def test_a_metrics_section_decides_and_no_section_gets_a_free_port_each() -> None:
    base = {"trust_domain": "example.org", "agents": {"a": {"address": "127.0.0.1:7101"}}}
    names = ["control", "a", "bridge"]
    bare = parse_config(base, Path("/tmp"))
    assert metrics_addresses(bare, names) == dict.fromkeys(names, "127.0.0.1:0")
    assert metrics_addresses(bare, names, auto=False) == dict.fromkeys(names)
    some = parse_config({**base, "metrics": {"addresses": {"a": "127.0.0.1:9999"}}}, Path("/tmp"))
    assert metrics_addresses(some, names) == {"control": None, "a": "127.0.0.1:9999", "bridge": None}
    based = parse_config({**base, "metrics": {"port_base": 9460, "host": "::1"}}, Path("/tmp"))
    assert metrics_addresses(based, names) == {"control": "::1:9460", "a": "::1:9461", "bridge": "::1:9462"}
    otlp_only = parse_config({**base, "metrics": {"otlp_endpoint": "http://127.0.0.1:4317"}}, Path("/tmp"))
    assert metrics_addresses(otlp_only, names) == dict.fromkeys(names, "127.0.0.1:0")
    ports = listen_ports(some)  # what a picked free port must not be: the members listen there later
    assert {7101, 9999} <= ports and 0 not in ports


def test_a_member_serves_on_the_socket_handed_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    sock, address = listen_metrics("127.0.0.1:0", "agent a")
    registry = CollectorRegistry()
    Counter("handed_calls", "calls", registry=registry).inc()
    monkeypatch.setenv(METRICS_ADDRESS_ENV, address)
    monkeypatch.setenv(METRICS_FD_ENV, str(os.dup(sock.fileno())))  # what the child inherits
    endpoint = MetricsEndpoint(registry, address)
    try:
        assert endpoint.address == address and METRICS_FD_ENV not in os.environ  # taken once
        assert "handed_calls_total 1.0" in _scrape(address)
    finally:
        endpoint.close()
    with socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])), timeout=5):
        pass  # up still holds the socket: the address stays taken while its member is down
    sock.close()
    with pytest.raises(ConfigError, match=r"metrics of agent a: cannot listen on 127\.0\.0\.1:\d+"):
        taken, at = listen_metrics("127.0.0.1:0", "x")
        with taken:
            listen_metrics(at, "agent a")
