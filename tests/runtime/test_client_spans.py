"""The client span of every call ends with the status its caller saw, from the call's done callback (no
task per call), for a call that succeeds and one the server refuses; real mesh, real sockets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from meshkit import running_mesh
from support import task

from agentmesh.interceptors import client
from agentmesh.v1 import agent_pb2_grpc


async def test_client_spans_end_in_the_done_callback_with_the_status_seen(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    awaited: list[Any] = []
    end_span = client._end_span

    async def counted(span: Any, call: Any) -> None:
        awaited.append(call)
        await end_span(span, call)

    monkeypatch.setattr(client, "_end_span", counted)
    policy = [{"name": "bridge-calls-a", "action": "allow", "to": ["a"], "from": ["bridge"]}]
    async with running_mesh(tmp_path, {"a": {"roles": ["a"]}, "b": {"roles": ["b"]}}, policy=policy) as mesh:
        await mesh.nodes["bridge"].stub("a", agent_pb2_grpc.AgentStub).Invoke(task(), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # no rule lets a call b
            await mesh.nodes["a"].stub("b", agent_pb2_grpc.AgentStub).Invoke(task(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        mesh.flush()
        records = [json.loads(line) for line in mesh.audit_path.read_text().splitlines()]
    spans = {(r["service"], r["attributes"]["agentmesh.target"]): r
             for r in records if r["kind"] == "client" and r["name"] == "agentmesh.v1.Agent/Invoke"}
    ok = spans[("bridge", "a")]
    assert ok["attributes"]["rpc.response.status_code"] == "OK" and "error.type" not in ok["attributes"]
    assert ok["attributes"]["rpc.method"] == "agentmesh.v1.Agent/Invoke"
    address = mesh.config.agent("a").address
    assert (ok["attributes"]["server.address"], ok["attributes"]["server.port"]) == (
        address.rpartition(":")[0], int(address.rpartition(":")[2]))
    denied = spans[("a", "b")]
    assert denied["attributes"]["rpc.response.status_code"] == "PERMISSION_DENIED"
    assert denied["attributes"]["error.type"] == "PERMISSION_DENIED"  # a client span: every status but OK errs
    assert denied["status"] == "ERROR" and ok["status"] == "OK"
    assert awaited == []  # every span ended in the callback, none in a task
