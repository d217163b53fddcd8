"""A handler whose onward call fails because the member it calls is gone answers its caller UNAVAILABLE
(retry later), not UNKNOWN; a handler's own error keeps its own status. Real mesh, real sockets: b is stopped,
a relays to it."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from meshkit import running_mesh

from agentmesh.v1 import agent_pb2, agent_pb2_grpc

POLICY = [{"name": "bridge-a", "action": "allow", "to": ["a"], "from": ["bridge"]},
          {"name": "a-b", "action": "allow", "to": ["b"], "from": ["a"]}]


async def test_an_onward_call_to_a_member_that_is_gone_is_unavailable(tmp_path: Path) -> None:
    async with running_mesh(tmp_path, {"a": {"roles": ["a"]}, "b": {"roles": ["b"]}}, policy=POLICY) as mesh:
        stub = mesh.nodes["bridge"].stub("a", agent_pb2_grpc.AgentStub)
        relayed = agent_pb2.Task(id="t", metadata={"next": "b"})
        assert len((await stub.Invoke(relayed, timeout=10)).output) == 2  # without the failure: a, then b
        await mesh.servers[1].stop(0)  # b is gone
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Invoke(relayed, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
        assert "a call it made failed" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as own:  # the handler's own error: a bad "next" name
            await stub.Invoke(agent_pb2.Task(id="t", metadata={"next": "no-such-member"}), timeout=10)
        assert own.value.code() == grpc.StatusCode.INVALID_ARGUMENT
