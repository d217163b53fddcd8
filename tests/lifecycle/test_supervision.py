"""What ``agentmesh up`` decides (restart or give up, stop order), its log directory per run, and the tether
that makes a child die with it: without the mesh (the real-process tests are in test_up_supervises.py)."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import pytest
from support import TD
from upkit import REPO, alive, cli, wait_until, write_up_mesh

from agentmesh.configfile import load_config, parse_config
from agentmesh.errors import ConfigError
from agentmesh.runtime.runlogs import RunLogs, latest_run, read_state
from agentmesh.runtime.supervision import CrashHistory, RestartPolicy, callers_of, stop_waves
from agentmesh.runtime.supervisor import exit_text


# ---------------------------------------------------------------------------------------------- restarts
def test_backoff_doubles_within_the_window_and_gives_up_at_the_limit() -> None:
    history = CrashHistory(RestartPolicy(max_crashes=4, window=60, first_delay=0.5, max_delay=1.5))
    assert [history.crashed(t) for t in (0, 1, 2)] == [0.5, 1.0, 1.5]  # doubled, capped at max_delay
    assert history.crashed(3) is None  # the 4th crash within 60 s: give up
    assert history.recent == 4


def test_a_child_that_stays_up_for_the_window_starts_over() -> None:
    history = CrashHistory(RestartPolicy(max_crashes=3, window=10, first_delay=1))
    assert history.crashed(0) == 1 and history.crashed(5) == 2
    assert history.crashed(100) == 1  # both earlier crashes are out of the window
    assert history.crashed(101) == 2 and history.crashed(102) is None


@pytest.mark.parametrize("kw", [{"max_crashes": 0}, {"max_crashes": True}, {"window": 0}, {"first_delay": -1},
                                {"max_delay": float("nan")}])
def test_restart_policy_refuses_nonsense(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        RestartPolicy(**kw)


@pytest.mark.parametrize(("code", "text"), [(3, "status 3"), (0, "status 0"), (-9, "signal SIGKILL"),
                                            (-15, "signal SIGTERM"), (None, "still running")])
def test_exit_text(code: int | None, text: str) -> None:
    assert exit_text(code) == text


# ---------------------------------------------------------------------------------------------- stop order
def _config(tmp_path: Path, agents: list[str], policy: list[dict[str, Any]],
            roles: dict[str, list[str]] | None = None) -> Any:
    doc = {"trust_domain": TD, "agents": {a: {"address": f"127.0.0.1:{7000 + i}", "roles": (roles or {}).get(a, [])}
                                          for i, a in enumerate(agents)}, "policy": policy}
    return parse_config(doc, tmp_path)


def _allow(name: str, to: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "action": "allow", "to": [to], **kw}


WORKFLOW = [  # as examples/workflow/mesh.yaml: bridge -> ingestor -> summarizer -> validator
    {"name": "no-outside-validator", "action": "deny", "to": ["validator"], "via": ["bridge"]},
    _allow("client-starts", "ingestor", roles=["client"], via=["bridge"]),
    _allow("ingestor-to-summarizer", "summarizer", roles=["client"], via=["ingestor"]),
    _allow("summarizer-to-validator", "validator", roles=["client"], via=["summarizer"]),
]


@pytest.mark.parametrize(("agents", "policy", "roles", "waves"), [
    # the pipeline from its edge inward, whatever order the file lists it in
    (["ingestor", "summarizer", "validator"], WORKFLOW, None, [["ingestor"], ["summarizer"], ["validator"]]),
    (["validator", "summarizer", "ingestor"], WORKFLOW, None, [["ingestor"], ["summarizer"], ["validator"]]),
    # no rule lets one agent call another (default deny): nothing to wait for, all at once
    (["a", "b", "c"], [_allow("client", "a", via=["bridge"])], None, [["a", "b", "c"]]),
    # direct calls by name (from, a SPIFFE ID too) and by the caller's roles
    (["a", "b", "c"], [_allow("ab", "b", **{"from": [f"spiffe://{TD}/agent/a"]}), _allow("bc", "c", roles=["b"])],
     {"b": ["b"]}, [["a"], ["b"], ["c"]]),
    # a chain's last member is the caller; a fan-out stops the callees together
    (["a", "b", "c"], [_allow("ab", "b", chain=["bridge", "a"]), _allow("ac", "c", via=["a"])], None,
     [["a"], ["b", "c"]]),
    # a cycle: the one listed first goes first
    (["a", "b"], [_allow("ab", "b", via=["a"]), _allow("ba", "a", via=["b"])], None, [["a"], ["b"]]),
    # a rule naming no caller at all: any member may call, so every other agent counts as a caller
    (["a", "b"], [_allow("any-to-b", "b")], None, [["a"], ["b"]]),
])
def test_stop_waves(tmp_path: Path, agents: list[str], policy: list[dict[str, Any]],
                    roles: dict[str, list[str]] | None, waves: list[list[str]]) -> None:
    assert stop_waves(_config(tmp_path, agents, policy, roles)) == waves


def test_deny_rules_and_bridge_or_self_calls_are_no_edges(tmp_path: Path) -> None:
    config = _config(tmp_path, ["a", "b"], [{"name": "deny", "action": "deny", "to": ["b"], "from": ["a"]},
                                            _allow("self", "a", via=["a"]), _allow("edge", "b", via=["bridge"])])
    assert callers_of(config) == {"a": set(), "b": set()}


# ---------------------------------------------------------------------------------------------- logs per run
def test_each_run_logs_afresh_and_the_last_ones_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    root.mkdir()
    (root / "front.log").write_text("a line of an older version of up\n")  # append-only, every run mixed
    runs = [RunLogs.create(root, ["front"], keep=2, now=1_800_000_000 + i) for i in range(3)]
    assert len({r.dir for r in runs}) == 3
    assert sorted(p.name for p in root.iterdir() if p.is_dir() and not p.is_symlink()) == \
        [runs[1].run_id, runs[2].run_id]  # the oldest went
    assert latest_run(root) == runs[2].dir
    runs[2].log("front").write_text("this run\n")
    assert (root / "front.log").read_text() == "this run\n"  # follows the current run
    runs[2].write_state({"pid": os.getpid(), "children": []})
    assert read_state(runs[2].dir)["pid"] == os.getpid() and read_state(tmp_path) == {}


def test_a_live_run_is_never_pruned(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    live = RunLogs.create(root, [], keep=1, now=1_800_000_000)
    live.write_state({"pid": os.getppid()})  # another process that is running
    RunLogs.create(root, [], keep=1, now=1_800_000_100)
    assert live.dir.is_dir()


# ---------------------------------------------------------------------------------------------- the tether
PARENT = """
import subprocess, sys, os
r, w = os.pipe()
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), str(r)], pass_fds=(r,))
print(child.pid, flush=True)
sys.stdin.read()  # until the test kills this process
"""
CHILD = """
import signal, sys, time
from agentmesh.runtime.tether import tether
signal.signal(signal.SIGTERM, lambda *_: (print("SIGTERM: draining", flush=True), sys.exit(0)))
tether(int(sys.argv[1]), int(sys.argv[2]), grace=0.5, margin=0.5)
print("tethered", flush=True)
while True:
    time.sleep(0.05)
"""
STUBBORN = CHILD.replace('sys.exit(0)', 'None')  # ignores SIGTERM: the lifeline's SIGKILL ends it


@pytest.mark.parametrize("child", [CHILD, STUBBORN], ids=["drains", "ignores-sigterm"])
def test_a_tethered_child_dies_with_its_parent_even_on_sigkill(child: str) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, child], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert parent.stdout is not None
        pid = int(_line(parent.stdout))
        assert _line(parent.stdout) == "tethered"
        assert alive(pid) and f"PPid:\t{parent.pid}\n" in Path(f"/proc/{pid}/status").read_text()
        started = time.monotonic()
        parent.kill()
        parent.wait()
        wait_until(lambda: not alive(pid), timeout=10, what="the child's death")
        assert time.monotonic() - started < 8
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def _line(stream: IO[str], timeout: float = 20.0) -> str:
    """The next line of ``stream`` (a pipe), waiting at most ``timeout``."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no output within {timeout:.0f}s"
    return stream.readline().strip()


def test_a_child_whose_parent_is_already_gone_exits_at_once() -> None:
    r = subprocess.run([sys.executable, "-m", "agentmesh.runtime.tether", "--parent", "1", "--", "--version"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 1 and "agentmesh" not in r.stdout


def test_the_tether_runs_the_agentmesh_command() -> None:
    launch = ("import os, subprocess, sys; sys.exit(subprocess.run([sys.executable, '-m', 'agentmesh.runtime.tether', "
              "'--parent', str(os.getpid()), '--', 'up', '--help']).returncode)")
    r = subprocess.run([sys.executable, "-c", launch], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0 and "--max-crashes" in r.stdout


def test_json_state_is_plain(tmp_path: Path) -> None:
    run = RunLogs.create(tmp_path, ["a"])
    run.write_state({"children": [{"name": "a", "pid": 1}]})
    assert json.loads((run.dir / "run.json").read_text())["children"][0]["name"] == "a"
    assert not list(run.dir.glob(".*.tmp"))



# ---------------------------------------------------------------------------------------------- before starting
def test_up_refuses_a_port_another_process_holds_before_starting_anything(tmp_path: Path) -> None:
    """As after ``kill -9`` of an older up whose children live on: before, the orphans answered up's health
    probes, so up said "mesh up" and its own children then failed to bind."""
    config = write_up_mesh(tmp_path, agents=("front",))
    held = load_config(config).agents["front"].address
    host, _, port = held.rpartition(":")
    with socket.socket() as s:
        s.bind((host, int(port)))
        s.listen()
        r = cli("up", str(config))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"agentmesh: error: agent front: cannot listen on {held}: address already in use (another process holds "
        f"port {port}; see: ss -ltnp 'sport = :{port}')"]
    assert not (tmp_path / "logs").exists()  # nothing started
