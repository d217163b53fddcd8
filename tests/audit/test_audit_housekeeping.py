"""Members' housekeeping with the control plane (the trust stream, their own token's refresh) leaves no
audit span unless ``audit.trace_housekeeping`` asks for it; a refused one always does (a revoked member
still trying is an audit event). Real mesh, real sockets, the JSONL log as written."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import grpc
from meshkit import Mesh, running_mesh
from support import raw_channel, task

from agentmesh.v1 import agent_pb2_grpc, control_pb2, control_pb2_grpc

AGENTS = {"a": {"roles": ["a"]}, "b": {"roles": ["b"]}}
POLICY = [{"name": "a-calls-b", "action": "allow", "to": ["b"], "from": ["a"]}]
WATCH = "/agentmesh.v1.IdentityService/WatchTrust"
ISSUE = "/agentmesh.v1.TokenService/IssueAgentToken"
RENEW = "/agentmesh.v1.IdentityService/Renew"


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def named(recs: list[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    return [r for r in recs if r["name"].lstrip("/") == method.lstrip("/")]


async def traffic(mesh: Mesh) -> None:
    for _ in range(3):
        await mesh.nodes["a"].stub("b", agent_pb2_grpc.AgentStub).Invoke(task(), timeout=10)


async def test_housekeeping_is_not_traced_by_default(tmp_path: Path) -> None:
    async with running_mesh(tmp_path, AGENTS, policy=POLICY) as mesh:
        await traffic(mesh)
        path = mesh.audit_path
    recs = records(path)  # every member stopped: their trust streams ended, and all was flushed
    assert len([r for r in recs if r["name"].endswith("/Invoke")]) == 6  # client + server span per call
    assert named(recs, WATCH) == [] and named(recs, ISSUE) == []


async def test_the_switch_traces_housekeeping(tmp_path: Path) -> None:
    audit = {"exporters": ["jsonl"], "jsonl_path": "audit.jsonl", "trace_housekeeping": True}
    async with running_mesh(tmp_path, AGENTS, policy=POLICY, audit=audit) as mesh:
        await traffic(mesh)
        path = mesh.audit_path
    recs = records(path)
    members = {"a", "b", "bridge"}
    assert {r["attributes"]["agentmesh.peer.spiffe_id"].rsplit("/", 1)[1] for r in named(recs, ISSUE)} == members
    assert {r["attributes"]["agentmesh.peer.spiffe_id"].rsplit("/", 1)[1] for r in named(recs, WATCH)} == members
    noise = len(named(recs, ISSUE)) + len(named(recs, WATCH))
    assert noise >= 6


async def test_a_revoked_member_still_trying_is_recorded(tmp_path: Path) -> None:
    async with running_mesh(tmp_path, AGENTS, policy=POLICY) as mesh:
        mesh.ca.revoke("b")
        until = time.monotonic() + 10
        while "b" not in mesh.control.trust.snapshot.revoked_members:  # the control plane reads its CA dir
            assert time.monotonic() < until, "the control plane did not see the revocation"
            await asyncio.sleep(0.05)
        ch = raw_channel(mesh.config.control.address, "control", bundle=mesh.ca.bundle,
                         cert_dir=mesh.config.identity_dir("b"))
        codes = []
        try:
            for call in (control_pb2_grpc.TokenServiceStub(ch).IssueAgentToken(control_pb2.AgentTokenRequest()),
                         control_pb2_grpc.IdentityServiceStub(ch).Renew(
                             control_pb2.CertificateSigningRequest(csr_pem=b"x"))):
                try:
                    await call
                except grpc.aio.AioRpcError as e:
                    codes.append(e.code())
        finally:
            await ch.close()
        assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 2
        mesh.control.sink.force_flush(5)
        recs = records(mesh.audit_path)
    assert named(recs, ISSUE) and named(recs, RENEW)  # (no successful one: those are not traced by default)
    for method in (ISSUE, RENEW):
        (refused,) = named(recs, method)
        assert refused["attributes"]["rpc.response.status_code"] == "UNAUTHENTICATED"
        assert refused["attributes"]["agentmesh.decision"] == "deny"
        assert any(e["name"] == "agentmesh.denied" and "revoked" in e["attributes"]["reason"]
                   for e in refused["events"])
