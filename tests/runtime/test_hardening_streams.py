"""Issue 13 item 5: an agent caps the HTTP/2 streams one connection may have open at once.

The attack: one connection opens more concurrent calls than the cap. The cap's worth run; the server never
holds more than the cap per connection, and the excess is refused (grpcio's client does not queue past the
server's limit: REFUSED_STREAM, UNAVAILABLE to the caller) or runs once a slot frees. So the default cap sits
well above what a member keeps in flight to another: 300 concurrent calls on one connection all succeed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import TD, identity_dir, new_ca, raw_channel, task

from agentmesh.errors import ConfigError
from agentmesh.runtime.credentials import AgentIdentity
from agentmesh.runtime.server import MAX_CONCURRENT_STREAMS, MeshServer, hardening_options
from agentmesh.v1 import agent_pb2, agent_pb2_grpc


class Gate(agent_pb2_grpc.AgentServicer):
    """Holds every call until released; records how many ran at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.running = 0
        self.peak = 0
        self.started = 0

    async def Invoke(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> agent_pb2.TaskResult:
        self.started += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return agent_pb2.TaskResult(task_id=request.id)


async def gated(tmp_path: Path, **kw: Any) -> tuple[MeshServer, Gate, grpc.aio.Channel]:
    """A MeshServer (``kw``: its options) whose Agent holds every call at a gate, and a channel to it over mTLS."""
    ca = new_ca(tmp_path)
    server = MeshServer(AgentIdentity(identity_dir(ca, tmp_path, "b"), TD, check_every=0), grace=0.1, **kw)
    gate = Gate()
    server.add(agent_pb2_grpc.add_AgentServicer_to_server, gate, "agentmesh.v1.Agent")
    port = await server.start("127.0.0.1:0")
    channel = raw_channel(f"127.0.0.1:{port}", "b", bundle=ca.bundle, cert_dir=identity_dir(ca, tmp_path, "a"))
    return server, gate, channel


async def _until(predicate, seconds: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


@pytest.mark.parametrize("cap", [4])
async def test_streams_past_the_cap_wait_on_one_connection(tmp_path: Path, cap: int) -> None:
    server, gate, ch = await gated(tmp_path, max_concurrent_streams=cap)
    try:
        stub = agent_pb2_grpc.AgentStub(ch)
        await ch.channel_ready()
        # without the attack: the cap's worth of concurrent calls all run at once
        calls = [stub.Invoke(task(), timeout=10) for _ in range(cap)]
        await _until(lambda: gate.running == cap)
        gate.release.set()
        await asyncio.gather(*calls)
        gate.release.clear()
        gate.started = gate.peak = 0
        # the attack: three times the cap on the same connection
        calls = [stub.Invoke(task(), timeout=10) for _ in range(3 * cap)]
        await _until(lambda: gate.running >= cap)
        await asyncio.sleep(0.3)  # time for the excess to arrive, were it not held back
        assert gate.running == gate.started == cap, "the server must not run more than the cap per connection"
        gate.release.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        codes = {r.code() if isinstance(r, grpc.aio.AioRpcError) else "ok" for r in results}
        assert codes <= {"ok", grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        assert gate.peak == cap
        assert gate.started >= cap
    finally:
        await ch.close()
        await server.stop(0)


async def test_a_burst_of_300_calls_on_one_connection_all_succeed_under_the_default_cap(tmp_path: Path) -> None:
    """With the cap at 100 (before), 153 of 300 such calls failed UNAVAILABLE (REFUSED_STREAM)."""
    server, gate, ch = await gated(tmp_path)
    try:
        stub = agent_pb2_grpc.AgentStub(ch)
        calls = [stub.Invoke(task(), timeout=20) for _ in range(300)]
        await _until(lambda: gate.running == 300, seconds=15)  # all 300 held open at once
        gate.release.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert [r for r in results if isinstance(r, Exception)] == []
    finally:
        await ch.close()
        await server.stop(0)


def test_server_options_bound_a_connection() -> None:
    opts = dict(hardening_options())
    assert opts["grpc.max_concurrent_streams"] == MAX_CONCURRENT_STREAMS == 1000
    assert opts["grpc.max_connection_idle_ms"] > 0
    assert opts["grpc.http2.max_ping_strikes"] == 2
    assert opts["grpc.keepalive_permit_without_calls"] == 0
    with pytest.raises(ConfigError):
        hardening_options(0)


@pytest.mark.parametrize(("value", "error"), [
    (0, "max_concurrent_streams: expected an integer >= 1"), ("many", "max_concurrent_streams"), (250, None),
])
def test_the_cap_is_configured_in_the_mesh_file(tmp_path: Path, value: object, error: str | None) -> None:
    from meshkit import write_mesh

    from agentmesh.configfile import load_config

    path = write_mesh(tmp_path, {"a": {}}, max_concurrent_streams=value)
    if error is None:
        assert load_config(path).max_concurrent_streams == value
    else:
        with pytest.raises(ConfigError, match=error):
            load_config(path)
