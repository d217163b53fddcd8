"""``agentmesh up`` supervises real processes: it restarts a crashed child (and says so), gives up on one that
keeps crashing, takes its children with it when it is killed, stops in order so that calls in flight
finish, and ``agentmesh status`` reports on the running mesh.

Before this supervisor (measured on the same meshes): any child's death stopped the whole mesh; after
``kill -9`` of up its 5 children kept serving and held their ports; SIGINT failed 4 of 4 two-hop calls in
flight (500 UNKNOWN); the bridge waited a fixed 10 s, then answered a plain-text 500.

Each test starts its own mesh (control plane, agents from tests/lifecycle/upapps.py, usually the
bridge) on free ports in a temporary directory, and ends every process it started. Starting a mesh of
3-5 Python processes takes 3-8 s on a busy 2-core machine, so these tests take 5-20 s each: the longer ones
are marked slow (the decisions, the log directories and the tether are tested fast in test_supervision.py).
Nothing sleeps to let time pass: the tests wait for lines of up's output, files the agents write, or
process states.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
from upkit import Bridge, Up, alive, child_pids, cli, descendants, wait_until, write_up_mesh

from agentmesh.configfile import load_config


def _start(ups: list[Up], config: Path, *args: str, **kw: str) -> Up:
    up = Up(config, *args, extra_env=kw or None)
    ups.append(up)
    up.wait_up(60)
    return up


def _port_free(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError:
            return False
    return True


def _marked(directory: Path, count: int) -> bool:
    return len(list(directory.iterdir())) >= count


@pytest.mark.slow  # a restart and two status commands on top of a start
async def test_a_crashed_child_is_restarted_and_the_mesh_serves_again(tmp_path: Path, started: list[Up]) -> None:
    config = write_up_mesh(tmp_path, metrics=True)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "middle.log").write_text("A LINE OF AN EARLIER RUN\n")  # the old append-only log
    up = _start(started, config)
    bridge = Bridge(config)
    async with bridge.client() as client:
        assert (await bridge.invoke(client)).status_code == 200
        middle = child_pids(tmp_path)["middle"]
        os.kill(middle, signal.SIGKILL)
        crash = up.wait_for(lambda line: "exited" in line)
        # one line: which child, how it ended, the last line of its log (this run's), the delay
        assert crash.startswith("agentmesh up: agent middle exited (signal SIGKILL); last log line: ")
        assert "serving on" in crash and "EARLIER RUN" not in crash
        assert "restarting in 0.5s (crash 1 of 5 within 60s)" in crash
        up.wait_for(lambda line: "agent middle is healthy again (restart 1)" in line)
        assert child_pids(tmp_path)["middle"] != middle and up.proc.poll() is None
        deadline = time.monotonic() + 20  # the callers' channels reconnect to the new process
        while (r := await bridge.invoke(client)).status_code != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert r.status_code == 200, r.text
        assert [p["text"] for p in r.json()["output"]] == ["front", "middle", "back"]
    log = (tmp_path / "logs" / "middle.log").read_text()  # now a link into this run's directory
    assert "EARLIER RUN" not in log and "--- agentmesh up: restart 1 at " in log

    # agentmesh status: every member healthy, with what up recorded and what the members serve
    r = cli("status", "--config", str(config), "-o", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["up_running"] and report["state"] == "up"
    members = {m["name"]: m for m in report["members"]}
    assert list(members) == ["control", "front", "middle", "back", "bridge"]
    assert all(m["healthy"] for m in members.values()), members
    assert members["middle"]["restarts"] == 1 and members["middle"]["last_exit"] == "signal SIGKILL"
    assert members["middle"]["pid"] == child_pids(tmp_path)["middle"]
    assert all(m["certificate_expires"] > report["checked_at"] for m in members.values())
    assert members["front"]["token_expires"] > report["checked_at"]  # front called middle: it has a token
    assert members["control"]["token_expires"] is None
    table = cli("status", "--config", str(config))
    assert table.returncode == 0 and "middle" in table.stdout and "SERVING" in table.stdout
    assert up.stop() == 0


@pytest.mark.slow  # real `up` processes, several seconds: CI runs it (make test stays under 5 min)
def test_a_child_that_keeps_crashing_stops_the_mesh(tmp_path: Path, started: list[Up]) -> None:
    config = write_up_mesh(tmp_path, agents=("solo",))
    flag = tmp_path / "crash"
    up = _start(started, config, "--no-bridge", "--max-crashes", "2", "--crash-window", "60",
                UPTEST_CRASH_FLAG=str(flag))
    children = descendants(up.proc.pid)
    flag.touch()  # from now on the app exits as soon as it is built
    os.kill(child_pids(tmp_path)["solo"], signal.SIGKILL)
    assert up.finish(60) == 1
    gave_up = [line for line in up.lines if "keeps crashing" in line]
    assert len(gave_up) == 1, up.output()
    assert gave_up[0].startswith("agentmesh up: agent solo keeps crashing (2 crashes within 60s; last: status 3, "
                                 "last log line: 'solo: cannot start: ")
    assert gave_up[0].endswith("stopping the mesh")
    assert "mesh stopped" in up.lines
    assert not [pid for pid in children if alive(pid)]


@pytest.mark.slow  # two meshes' worth of starts
def test_kill_9_of_up_takes_its_children_and_frees_the_ports(tmp_path: Path, started: list[Up]) -> None:
    config = write_up_mesh(tmp_path, agents=("front",))
    up = _start(started, config)
    children = descendants(up.proc.pid)
    assert set(child_pids(tmp_path).values()) <= set(children) and len(child_pids(tmp_path)) == 3
    up.proc.kill()
    up.finish()
    wait_until(lambda: not any(alive(p) for p in children), timeout=15, what="every child's death")
    mesh = load_config(config)
    addresses = [mesh.control.address, mesh.bridge.listen, *(a.address for a in mesh.agents.values())]
    assert all(_port_free(a) for a in addresses)
    again = _start(started, config)  # a second up starts
    assert again.stop() == 0


@pytest.mark.slow  # real `up` processes, several seconds: CI runs it (make test stays under 5 min)
async def test_sigint_lets_two_hop_calls_in_flight_finish(tmp_path: Path, started: list[Up]) -> None:
    config = write_up_mesh(tmp_path, agents=("front", "back"), grace="10s")
    up = _start(started, config)
    bridge = Bridge(config)
    marks = tmp_path / "marks"
    marks.mkdir()
    async with bridge.client() as client:
        calls = [asyncio.create_task(bridge.invoke(client, ("front", "back"), task_id=f"c{i}", mark=str(marks),
                                                   wait_front="1.5")) for i in range(4)]
        await asyncio.to_thread(wait_until, lambda: _marked(marks, 4), 20, "4 calls at the front agent")
        up.proc.send_signal(signal.SIGINT)  # while all 4 wait at front, before front calls back
        results = await asyncio.gather(*calls)
    assert [r.status_code for r in results] == [200] * 4, [r.text for r in results]
    assert all([p["text"] for p in r.json()["output"]] == ["front", "back"] for r in results)
    assert up.finish(60) == 0
    assert "stopping: bridge -> front -> back -> control (each drains up to 10s; Ctrl-C again stops at once)" \
        in up.lines


@pytest.mark.slow  # real `up` processes, several seconds: CI runs it (make test stays under 5 min)
async def test_the_bridge_answers_503_json_at_the_end_of_its_grace_period(tmp_path: Path,
                                                                         started: list[Up]) -> None:
    config = write_up_mesh(tmp_path, agents=("front",), grace="1s")
    up = _start(started, config)
    bridge = Bridge(config)
    marks = tmp_path / "marks"
    marks.mkdir()
    async with bridge.client() as client:
        call = asyncio.create_task(bridge.invoke(client, ("front",), mark=str(marks), wait_front="30"))
        await asyncio.to_thread(wait_until, lambda: _marked(marks, 1), 20, "the call at front")
        stopped = time.monotonic()
        up.proc.send_signal(signal.SIGINT)
        r = await call
        took = time.monotonic() - stopped
    assert r.status_code == 503 and r.headers["content-type"] == "application/json", r.text
    assert r.json()["code"] == "UNAVAILABLE" and "grace period" in r.json()["message"]
    assert "retry-after" in r.headers
    assert 1.0 <= took < 5, took  # grace_period (1 s), not a fixed 10 s
    assert up.finish(30) == 0


@pytest.mark.slow
async def test_a_middle_agent_killed_mid_call_is_503_at_the_bridge(tmp_path: Path, started: list[Up]) -> None:
    config = write_up_mesh(tmp_path)
    _start(started, config)
    bridge = Bridge(config)
    marks = tmp_path / "marks"
    marks.mkdir()
    async with bridge.client() as client:
        call = asyncio.create_task(bridge.invoke(client, mark=str(marks), wait_middle="30"))
        await asyncio.to_thread(wait_until, lambda: (marks / "t-middle").exists(), 20, "the call at middle")
        os.kill(child_pids(tmp_path)["middle"], signal.SIGKILL)
        r = await call
    assert r.status_code == 503 and r.json()["code"] == "UNAVAILABLE", r.text
