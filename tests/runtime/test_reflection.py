"""gRPC server reflection (issue 14): every member serves it, behind mutual TLS, its token and the policy.

Reflection is not exempt like health: a call to it passes the whole server chain (certificate, token,
policy, audit span), so the default-deny policy refuses it unless a rule allows it. grpcurl is not
installable here; the clients are grpcio-reflection's own: its stub over a mesh channel (the client
chain adds the member's bound token), and its ``ProtoReflectionDescriptorDatabase`` over a plain channel
with an identity directory's files and a bearer token, as grpcurl's ``-cacert/-cert/-key -H`` send them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from meshkit import Mesh, running_mesh
from support import TD, raw_channel

from agentmesh.cli.main import main
from agentmesh.metadata import REFLECTION_METHOD, REFLECTION_V1_METHOD

AGENTS = {"svc": {"roles": ["worker"]}, "ops": {"roles": ["operator"]}}
#: the rule the README shows: v1 too, which grpcurl asks first (UNIMPLEMENTED, then it falls back)
POLICY = [{"name": "operators-list-services", "action": "allow", "to": ["svc"], "roles": ["operator"],
           "methods": ["/grpc.reflection.*/ServerReflectionInfo"]}]
LIST = reflection_pb2.ServerReflectionRequest(list_services="")


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path, AGENTS, policy=POLICY) as m:
        yield m


async def list_services(mesh: Mesh, caller: str, method: str = REFLECTION_METHOD) -> list[str]:
    """ServerReflectionInfo (bidi streaming) from member ``caller`` to svc over its mesh channel."""
    channel = mesh.nodes[caller].channels.channel("svc")
    call = channel.stream_stream(method, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)()
    await call.write(LIST)
    response = await call.read()
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK
    return [s.name for s in response.list_services_response.service]


async def test_a_caller_the_policy_allows_lists_the_services(mesh: Mesh) -> None:
    stub = mesh.nodes["ops"].stub("svc", reflection_pb2_grpc.ServerReflectionStub)
    call = stub.ServerReflectionInfo()
    answers = []
    for request in (LIST, reflection_pb2.ServerReflectionRequest(file_containing_symbol="agentmesh.v1.Agent")):
        await call.write(request)  # one stream, two questions: the bidi call stays inside the chain
        answers.append(await call.read())
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK
    listed = [s.name for s in answers[0].list_services_response.service]
    assert listed == ["agentmesh.v1.Agent", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"]
    assert answers[1].file_descriptor_response.file_descriptor_proto  # the Agent's .proto and its imports


async def test_the_v1_probe_of_an_allowed_caller_is_unimplemented(mesh: Mesh) -> None:
    """grpcurl asks v1 first and falls back to v1alpha only on UNIMPLEMENTED (a refusal stops it)."""
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await list_services(mesh, "ops", REFLECTION_V1_METHOD)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _describe(address: str, identity: Path, token: str) -> tuple[list[str], list[str]]:
    """What grpcurl does with ``-cacert bundle.pem -cert cert.pem -key key.pem -H 'authorization: Bearer
    …' list`` and ``describe agentmesh.v1.Agent``, with grpcio-reflection's (synchronous) client."""
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials((identity / "bundle.pem").read_bytes(), (identity / "key.pem").read_bytes(),
                                     (identity / "cert.pem").read_bytes()),
        grpc.access_token_call_credentials(token))
    with grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", "svc")]) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = list(database.get_services())
        agent = descriptor_pool.DescriptorPool(database).FindServiceByName("agentmesh.v1.Agent")
        return services, [m.name for m in agent.methods]


async def test_the_readme_recipe_lists_and_describes(mesh: Mesh, capsys: pytest.CaptureFixture[str]) -> None:
    """README "Listing services": an operator's identity (issued by the CA, no agent of the config) and a
    token bound to its certificate from ``agentmesh token issue``; the rule admits it by its role."""
    identity = mesh.root / "identities" / "outsider"
    assert main(["token", "issue", "--config", str(mesh.root / "mesh.yaml"), "--sub", f"spiffe://{TD}/agent/outsider",
                 "--role", "operator", "--cert", str(identity / "cert.pem")]) == 0
    token = capsys.readouterr().out.strip()
    services, methods = await asyncio.to_thread(_describe, mesh.config.agent("svc").address, identity, token)
    assert "agentmesh.v1.Agent" in services
    assert methods == ["Invoke", "InvokeStream", "Describe"]


async def test_a_member_without_the_rule_is_refused_and_audited(tmp_path: Path) -> None:
    async with running_mesh(tmp_path, AGENTS, policy=POLICY) as mesh:
        for method in (REFLECTION_METHOD, REFLECTION_V1_METHOD):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await list_services(mesh, "bridge", method)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "no rule allows" in (e.value.details() or "")
    spans = _spans(mesh)  # the mesh is stopped: every span has ended and been written
    denied = [s for s in spans if s["kind"] == "server" and s["attributes"].get("agentmesh.decision") == "deny"
              and s["attributes"].get("agentmesh.peer.spiffe_id", "").endswith("/agent/bridge")]
    # v1alpha is served: its name is recorded; v1 is not (its name is the caller's choice): _OTHER, span "grpc"
    assert sorted((s["name"], s["attributes"]["rpc.method"]) for s in denied) == [
        ("grpc", "_OTHER"), (REFLECTION_METHOD.lstrip("/"), REFLECTION_METHOD.lstrip("/"))]
    for span in denied:
        assert span["attributes"]["agentmesh.decision"] == "deny"
        assert span["attributes"]["rpc.response.status_code"] == "PERMISSION_DENIED"
        assert span["status"] == "OK"  # UNSET: a refusal is the server doing its job (the JSONL says OK)


async def test_a_caller_without_a_token_is_unauthenticated(mesh: Mesh) -> None:
    channel = raw_channel(mesh.config.agent("svc").address, "svc", bundle=mesh.ca.bundle,
                          cert_dir=mesh.config.identity_dir("ops"))  # the operator's certificate, no token
    try:
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([LIST]), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call.read()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await channel.close()


async def test_servers_without_a_policy_stage_do_not_serve_reflection(mesh: Mesh) -> None:
    """The control plane's chain checks certificates only: reflection there would be open to any member."""
    assert all("grpc.reflection.v1alpha.ServerReflection" in s.services for s in mesh.servers)
    assert "grpc.reflection.v1alpha.ServerReflection" not in mesh.control.server.services


def _spans(mesh: Mesh) -> list[dict[str, Any]]:
    return [json.loads(line) for line in mesh.audit_path.read_text().splitlines() if line.strip()]
