"""With the control plane gone, revocation data ages: past revocation.max_staleness a member follows
revocation.failure_mode (closed: peers it already accepted keep working, new peers are refused;
strict: everyone refused; open: everyone accepted, one warning). Time passes by an injected clock."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from meshkit import running_mesh, write_mesh
from support import task

from agentmesh.clock import FakeClock
from agentmesh.errors import Unavailable
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

AGENTS = {"ingestor": {"roles": ["ingestor"]}, "summarizer": {"roles": ["summarizer"]}}
POLICY = [{"name": "direct", "action": "allow", "to": ["ingestor"], "from": ["bridge", "summarizer"]}]


@pytest.mark.parametrize(("mode", "known_ok", "new_ok"), [
    ("closed", True, False),
    ("strict", False, False),
    ("open", True, True),
])
async def test_stale_revocation_data_follows_the_failure_mode(tmp_path: Path, mode: str, known_ok: bool,
                                                               new_ok: bool, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(time.time())
    async with running_mesh(tmp_path, AGENTS, clock=clock, policy=POLICY,
                            revocation={"max_staleness": "60s", "failure_mode": mode}) as mesh:
        known = mesh.nodes["bridge"].stub("ingestor", agent_pb2_grpc.AgentStub)
        new = mesh.nodes["summarizer"].stub("ingestor", agent_pb2_grpc.AgentStub)
        await known.Invoke(task(), timeout=5)  # accepted while the data is fresh

        await mesh.control.stop(0)  # no more heartbeats
        clock.advance(30)
        await known.Invoke(task(), timeout=5)  # still within max_staleness, in every mode
        clock.advance(31)

        caplog.set_level(logging.WARNING, "agentmesh.trust")
        for stub, expected_ok in ((known, known_ok), (new, new_ok), (known, known_ok), (new, new_ok)):
            if expected_ok:
                await stub.Invoke(task(), timeout=5)
            else:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Invoke(task(), timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "cannot check" in (refused.value.details() or "")
        warnings = [r for r in caplog.records if "revocation data is" in r.getMessage()]
        assert len(warnings) == (1 if known_ok or new_ok else 0)  # once per stale episode, not per call


def test_a_member_that_cannot_get_revocation_data_refuses_to_start_in_one_line(tmp_path: Path) -> None:
    path = write_mesh(tmp_path, {"ingestor": {"roles": ["ingestor"], "app": "meshkit:RelayAgent"}},
                      control={"address": "127.0.0.1:9", "connect_timeout": "1s"})
    tests = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "agentmesh.cli.main", "agent", "ingestor", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(tests), "PATH": ""})
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agentmesh: error: ingestor: no trust data"), done.stderr
    assert "cannot check revocations" in lines[0]


async def test_members_follow_a_restarted_control_plane_within_seconds(tmp_path: Path) -> None:
    """The control channel backs off to at most ~3 s (gRPC's default grows to 120 s): a member is back on
    the new control plane's trust stream, and can renew, shortly after it returns."""
    from agentmesh.runtime.control import start_control

    async with running_mesh(tmp_path, AGENTS, policy=POLICY) as mesh:
        node = mesh.nodes["ingestor"]
        assert node.trust.snapshot is not None
        before = node.trust.snapshot.generation
        await mesh.control.stop(0)
        with pytest.raises(Unavailable, match="control plane unavailable"):
            await node.renewer.renew()  # type: ignore[union-attr]
        mesh.control = await start_control(mesh.config)  # the same address; the fixture stops it
        await node.wait_for_trust(lambda t: t.generation != before, timeout=15)
        await node.renewer.renew()  # type: ignore[union-attr]


class Streamer(agent_pb2_grpc.AgentServicer):
    def __init__(self, node: object) -> None:
        self.calls = 0

    async def InvokeStream(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> Any:
        yield agent_pb2.TaskEvent(task_id=request.id, progress="open")
        await asyncio.Event().wait()


async def test_strict_mode_ends_calls_already_running_once_the_data_is_stale(tmp_path: Path) -> None:
    clock = FakeClock(time.time())
    async with running_mesh(tmp_path, AGENTS, clock=clock, policy=POLICY, servicer=Streamer,
                            tokens={"revocation_refresh": "200ms"},
                            revocation={"max_staleness": "60s", "failure_mode": "strict"}) as mesh:
        stream = mesh.nodes["bridge"].stub("ingestor", agent_pb2_grpc.AgentStub).InvokeStream(task())
        assert (await stream.read()).progress == "open"
        await mesh.control.stop(0)
        clock.advance(61)  # no update arrives any more: the member's own sweep notices
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(stream.read(), 10)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE and "cannot check" in (ended.value.details() or "")
