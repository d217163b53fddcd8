"""A2A through the bridge, with the STOCK a2a-sdk clients (REST and JSON-RPC) against the stock a2a-sdk
gRPC server behind the mesh: send, stream, get, list, cancel, subscribe; A2A's errors raised as their
own types by the SDK; refusals of the mesh in A2A's shapes; the JSON-RPC protocol errors; A2A's service
parameters both ways. Every refusal is paired with the same request succeeding."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from a2a.client import ClientCallContext, ClientConfig, ClientFactory
from a2a.client.errors import A2AClientError
from a2a.types import a2a_pb2
from a2a.utils.errors import TaskNotFoundError
from bridgekit import A2A_MODULE, AGENT_MODULE, EXAMPLE_CARD, PROBE_MODULE, BridgeMesh, running_bridge, tls_context

from agentmesh.a2a.sdk import card_from_json

pytestmark = pytest.mark.asyncio(loop_scope="module")

AGENTS: dict[str, dict[str, Any]] = {
    "travel": {"roles": ["travel"], "descriptors": [A2A_MODULE]},
    "alpha": {"roles": ["alpha"], "descriptors": [AGENT_MODULE, PROBE_MODULE]},
}
SECTIONS: dict[str, Any] = {
    "policy": [{"name": "clients-via-bridge", "action": "allow", "roles": ["client"], "via": ["bridge"]}],
    "rate_limits": {"rules": [{"name": "limited", "match": {"principals": ["limited@example.org"]},
                               "rate": "1/m", "burst": 1}]},
    "bridge": {"max_body": "64KiB", "max_timeout": "5s", "default_timeout": "5s"},
}
REST, JSONRPC = "HTTP+JSON", "JSONRPC"
BINDINGS = [REST, JSONRPC]
EXTENSION = "https://extensions.example.org/loyalty/v1"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BridgeMesh]:
    async with running_bridge(tmp_path_factory.mktemp("a2a"), AGENTS, serve=["alpha"], a2a=["travel"],
                              **SECTIONS) as m:
        yield m


def card(mesh: BridgeMesh) -> Any:
    c = card_from_json(EXAMPLE_CARD.read_text(), "card.json")
    base = f"{mesh.url}/v1/agents/travel"
    c.supported_interfaces.add(url=base, protocol_binding=JSONRPC, protocol_version="1.0")
    c.supported_interfaces.add(url=base, protocol_binding=REST, protocol_version="1.0")
    return c


@pytest_asyncio.fixture(loop_scope="module")
async def http(mesh: BridgeMesh) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client for the SDK: the bridge's CA, the caller's bearer token."""
    async with httpx.AsyncClient(verify=tls_context(mesh.bundle), timeout=10, headers=mesh.auth()) as c:
        yield c


def sdk(http: httpx.AsyncClient, mesh: BridgeMesh, binding: str, *, streaming: bool = False) -> Any:
    config = ClientConfig(httpx_client=http, supported_protocol_bindings=[binding], streaming=streaming)
    return ClientFactory(config).create(card(mesh))


def message(text: str, *, immediately: bool = False) -> Any:
    req = a2a_pb2.SendMessageRequest(message=a2a_pb2.Message(
        message_id=uuid.uuid4().hex, role=a2a_pb2.ROLE_USER, parts=[a2a_pb2.Part(text=text)]))
    req.configuration.return_immediately = immediately
    return req


async def events(client: Any, request: Any) -> list[Any]:
    return [e async for e in client.send_message(request)]


def rpc(method: str, params: Any, rpc_id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params}


# ---------------------------------------------------------------------------------------------- the happy paths
@pytest.mark.parametrize("binding", BINDINGS)
async def test_send_get_and_list(mesh: BridgeMesh, http: httpx.AsyncClient, binding: str) -> None:
    client = sdk(http, mesh, binding)
    (reply,) = await events(client, message(f"Lisbon by {binding}"))
    task = reply.task
    assert task.status.state == a2a_pb2.TASK_STATE_COMPLETED
    assert task.artifacts[0].parts[0].text.endswith(f"Lisbon by {binding}")
    got = await client.get_task(a2a_pb2.GetTaskRequest(id=task.id))
    assert got.id == task.id and got.status.state == a2a_pb2.TASK_STATE_COMPLETED
    listed = await client.list_tasks(a2a_pb2.ListTasksRequest())
    assert task.id in {t.id for t in listed.tasks}


@pytest.mark.parametrize("binding", BINDINGS)
async def test_stream(mesh: BridgeMesh, http: httpx.AsyncClient, binding: str) -> None:
    client = sdk(http, mesh, binding, streaming=True)
    seen = await events(client, message("Porto"))
    kinds = [e.WhichOneof("payload") for e in seen]
    assert kinds[0] == "task" and "artifact_update" in kinds
    assert seen[-1].status_update.status.state == a2a_pb2.TASK_STATE_COMPLETED
    artifact = next(e.artifact_update.artifact for e in seen if e.HasField("artifact_update"))
    assert artifact.parts[0].text.endswith("Porto")


@pytest.mark.parametrize("binding", BINDINGS)
async def test_subscribe_then_cancel(mesh: BridgeMesh, http: httpx.AsyncClient, binding: str) -> None:
    client = sdk(http, mesh, binding, streaming=True)
    unary = sdk(http, mesh, binding)
    (first,) = await events(unary, message("wait for me", immediately=True))
    task_id = first.task.id
    subscription = client.subscribe(a2a_pb2.SubscribeToTaskRequest(id=task_id))
    snapshot = await anext(subscription)
    assert snapshot.task.id == task_id and snapshot.task.status.state == a2a_pb2.TASK_STATE_WORKING
    cancelled = await unary.cancel_task(a2a_pb2.CancelTaskRequest(id=task_id))
    assert cancelled.status.state == a2a_pb2.TASK_STATE_CANCELED
    rest = [e async for e in subscription]
    assert rest[-1].status_update.status.state == a2a_pb2.TASK_STATE_CANCELED


# ---------------------------------------------------------------------------------------------- A2A's errors
@pytest.mark.parametrize("binding", BINDINGS)
async def test_unknown_task_raises_task_not_found(mesh: BridgeMesh, http: httpx.AsyncClient, binding: str) -> None:
    client = sdk(http, mesh, binding, streaming=True)
    (reply,) = await events(sdk(http, mesh, binding), message("Faro"))
    assert (await client.get_task(a2a_pb2.GetTaskRequest(id=reply.task.id))).id == reply.task.id
    with pytest.raises(TaskNotFoundError):
        await client.get_task(a2a_pb2.GetTaskRequest(id="no-such-task"))
    with pytest.raises(TaskNotFoundError):
        await client.cancel_task(a2a_pb2.CancelTaskRequest(id="no-such-task"))
    with pytest.raises(TaskNotFoundError):  # a stream refused before its first event
        await anext(client.subscribe(a2a_pb2.SubscribeToTaskRequest(id="no-such-task")))


async def test_rest_error_body_is_a2a_status(mesh: BridgeMesh) -> None:
    r = await mesh.client.get("/v1/agents/travel/tasks/no-such-task", headers=mesh.auth())
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == 404 and error["status"] == "NOT_FOUND" and error["message"]
    assert error["details"][0] == {"@type": ERROR_INFO, "reason": "TASK_NOT_FOUND", "domain": "a2a-protocol.org"}


async def test_jsonrpc_error_object(mesh: BridgeMesh) -> None:
    r = await mesh.client.post("/v1/agents/travel", json=rpc("GetTask", {"id": "no-such-task"}, "x1"),
                               headers=mesh.auth())
    assert r.status_code == 200
    doc = r.json()
    assert doc["jsonrpc"] == "2.0" and doc["id"] == "x1" and doc["error"]["code"] == -32001
    assert doc["error"]["data"][0]["reason"] == "TASK_NOT_FOUND"


# ---------------------------------------------------------------------------------------------- refusals of the mesh
async def test_missing_token_is_401_in_a2a_shapes(mesh: BridgeMesh, http: httpx.AsyncClient) -> None:
    send = {"message": {"messageId": "m-401", "role": "ROLE_USER", "parts": [{"text": "Braga"}]}}
    r = await mesh.client.post("/v1/agents/travel/message:send", json=send)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="agentmesh"'
    error = r.json()["error"]
    assert (error["code"], error["status"]) == (401, "UNAUTHENTICATED")
    assert error["details"][0]["domain"] == "agentmesh" and error["details"][0]["reason"] == "UNAUTHENTICATED"
    assert "Bearer" not in r.text.replace('Bearer realm', '')  # no token anywhere in the answer

    r = await mesh.client.post("/v1/agents/travel", json=rpc("SendMessage", send, 7))
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="agentmesh"'
    doc = r.json()
    assert doc["jsonrpc"] == "2.0" and doc["id"] is None and doc["error"]["code"] == -32000
    assert doc["error"]["data"][0]["reason"] == "UNAUTHENTICATED"

    async with httpx.AsyncClient(verify=tls_context(mesh.bundle), timeout=10) as anonymous:
        for binding in BINDINGS:
            with pytest.raises(A2AClientError, match="401"):
                await events(sdk(anonymous, mesh, binding), message("Braga"))
    # the same requests with a token
    r = await mesh.client.post("/v1/agents/travel/message:send", json=send, headers=mesh.auth())
    assert r.status_code == 200 and r.json()["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
    send["message"]["messageId"] = "m-401-rpc"
    r = await mesh.client.post("/v1/agents/travel", json=rpc("SendMessage", send, 7), headers=mesh.auth())
    assert r.status_code == 200 and r.json()["id"] == 7 and "result" in r.json()
    for binding in BINDINGS:
        assert (await events(sdk(http, mesh, binding), message("Braga")))[0].task.id


async def test_policy_and_rate_limit_refusals_keep_their_status(mesh: BridgeMesh) -> None:
    body = rpc("ListTasks", {})
    guest = mesh.auth("guest@example.org", roles=("guest",))
    r = await mesh.client.get("/v1/agents/travel/tasks", headers=guest)
    assert r.status_code == 403 and r.json()["error"]["status"] == "PERMISSION_DENIED"
    assert r.json()["error"]["details"][0]["reason"] == "PERMISSION_DENIED"
    r = await mesh.client.post("/v1/agents/travel", json=body, headers=guest)
    assert r.status_code == 403 and r.json()["error"]["code"] == -32000
    assert r.json()["error"]["data"][0] == {"@type": ERROR_INFO, "reason": "PERMISSION_DENIED", "domain": "agentmesh",
                                            "metadata": {}}
    client = mesh.auth("guest@example.org", roles=("client",))
    assert (await mesh.client.get("/v1/agents/travel/tasks", headers=client)).status_code == 200
    assert "result" in (await mesh.client.post("/v1/agents/travel", json=body, headers=client)).json()

    limited = mesh.auth("limited@example.org")
    r = await mesh.client.post("/v1/agents/travel", json=body, headers=limited)
    assert r.status_code == 200 and "result" in r.json()
    r = await mesh.client.post("/v1/agents/travel", json=body, headers=limited)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == -32000 and r.json()["error"]["data"][0]["reason"] == "RATE_LIMITED"
    r = await mesh.client.get("/v1/agents/travel/tasks", headers=limited)
    assert r.status_code == 429 and r.json()["error"]["details"][0]["reason"] == "RATE_LIMITED"


# ---------------------------------------------------------------------------------------------- JSON-RPC protocol
@pytest.mark.parametrize(("bad", "good", "code"), [
    (b'{"jsonrpc": "2.0", "id": 1, "method": "ListTasks"', b'{"jsonrpc": "2.0", "id": 1, "method": "ListTasks"}',
     -32700),
    (json.dumps(rpc("ListTask", {})).encode(), json.dumps(rpc("ListTasks", {})).encode(), -32601),
    (json.dumps(rpc("GetTask", {"taskId": "x"})).encode(), json.dumps(rpc("ListTasks", {"pageSize": 5})).encode(),
     -32602),
    (json.dumps(rpc("ListTasks", ["x"])).encode(), json.dumps(rpc("ListTasks", {})).encode(), -32602),
    (json.dumps([rpc("ListTasks", {})]).encode(), json.dumps(rpc("ListTasks", {})).encode(), -32600),
    (json.dumps({"jsonrpc": "2.0", "method": "ListTasks"}).encode(),
     json.dumps({"jsonrpc": "2.0", "method": "ListTasks", "id": None}).encode(), -32600),
    (json.dumps({**rpc("ListTasks", {}), "jsonrpc": "1.0"}).encode(), json.dumps(rpc("ListTasks", {})).encode(),
     -32600),
], ids=["parse-error", "unknown-method", "invalid-params", "params-not-object", "batch", "notification",
        "not-2.0"])
async def test_jsonrpc_protocol_errors(mesh: BridgeMesh, bad: bytes, good: bytes, code: int) -> None:
    headers = {**mesh.auth(), "Content-Type": "application/json"}
    r = await mesh.client.post("/v1/agents/travel", content=bad, headers=headers)
    assert r.status_code == 200 and r.json()["error"]["code"] == code and "result" not in r.json()
    r = await mesh.client.post("/v1/agents/travel", content=good, headers=headers)
    assert r.status_code == 200 and "result" in r.json() and "error" not in r.json()


async def test_jsonrpc_limits_and_routes(mesh: BridgeMesh) -> None:
    big = rpc("ListTasks", {"pageToken": "x" * 70_000})
    r = await mesh.client.post("/v1/agents/travel", json=big, headers=mesh.auth())
    assert r.status_code == 413 and r.json()["error"]["code"] == -32000
    text = {**mesh.auth(), "Content-Type": "text/plain"}
    r = await mesh.client.post("/v1/agents/travel", content=json.dumps(rpc("ListTasks", {})), headers=text)
    assert r.status_code == 415
    r = await mesh.client.post("/v1/agents/travel", json=rpc("ListTasks", {"pageSize": 1}), headers=mesh.auth())
    assert r.status_code == 200 and "result" in r.json()
    # only A2A agents have the JSON-RPC endpoint; other routes keep the bridge's own error body
    r = await mesh.client.post("/v1/agents/alpha", json=rpc("ListTasks", {}), headers=mesh.auth())
    assert r.status_code == 404
    r = await mesh.client.post("/v1/agents/nobody", json=rpc("ListTasks", {}), headers=mesh.auth())
    assert r.status_code == 404
    r = await mesh.client.post("/v1/agents/alpha/agentmesh.v1.Agent/Describe", json={})
    assert r.status_code == 401 and r.json()["code"] == "UNAUTHENTICATED" and "error" not in r.json()


async def test_jsonrpc_stream_events_carry_the_id(mesh: BridgeMesh) -> None:
    send = {"message": {"messageId": uuid.uuid4().hex, "role": "ROLE_USER", "parts": [{"text": "Evora"}]}}
    async with mesh.client.stream("POST", "/v1/agents/travel", json=rpc("SendStreamingMessage", send, "s-1"),
                                  headers={**mesh.auth(), "Accept": "text/event-stream"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        data = [json.loads(line[5:]) async for line in r.aiter_lines() if line.startswith("data:")]
    assert all(d["jsonrpc"] == "2.0" and d["id"] == "s-1" and "result" in d for d in data)
    assert data[-1]["result"]["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED"


# ---------------------------------------------------------------------------------------------- service parameters
async def test_a2a_extensions_round_trip(mesh: BridgeMesh, http: httpx.AsyncClient) -> None:
    agent = mesh.a2a["travel"]
    send = {"message": {"messageId": uuid.uuid4().hex, "role": "ROLE_USER", "parts": [{"text": "Sintra"}]}}
    params = {**mesh.auth(), "A2A-Extensions": EXTENSION, "A2A-Version": "1.0"}
    r = await mesh.client.post("/v1/agents/travel/message:send", json=send, headers=params)
    assert r.status_code == 200 and r.headers["A2A-Extensions"] == EXTENSION
    assert agent.metadata[-1]["a2a-extensions"] == EXTENSION and agent.metadata[-1]["a2a-version"] == "1.0"
    send["message"]["messageId"] = uuid.uuid4().hex
    r = await mesh.client.post("/v1/agents/travel", json=rpc("SendMessage", send), headers=params)
    assert r.status_code == 200 and r.headers["A2A-Extensions"] == EXTENSION and "result" in r.json()
    send["message"]["messageId"] = uuid.uuid4().hex
    async with mesh.client.stream("POST", "/v1/agents/travel", json=rpc("SendStreamingMessage", send),
                                  headers={**params, "Accept": "text/event-stream"}) as s:
        assert s.headers["A2A-Extensions"] == EXTENSION
        await s.aread()
    # without the parameter: none forwarded, none returned
    send["message"]["messageId"] = uuid.uuid4().hex
    r = await mesh.client.post("/v1/agents/travel/message:send", json=send, headers=mesh.auth())
    assert r.status_code == 200 and "A2A-Extensions" not in r.headers
    assert "a2a-extensions" not in agent.metadata[-1]
    # the SDK client's own service parameters get there too, on both bindings
    for binding in BINDINGS:
        context = ClientCallContext(service_parameters={"A2A-Extensions": EXTENSION})
        client = sdk(http, mesh, binding)
        replies = [e async for e in client.send_message(message("Tavira"), context=context)]
        assert replies[0].task.status.state == a2a_pb2.TASK_STATE_COMPLETED
        assert agent.metadata[-1]["a2a-extensions"] == EXTENSION and agent.metadata[-1]["a2a-version"] == "1.0"


@pytest.mark.parametrize("binding", BINDINGS)
async def test_disconnected_client_cancels_the_stream(mesh: BridgeMesh, binding: str) -> None:
    """A stream whose client goes away ends the agent's call, on both bindings (one path)."""
    send = {"message": {"messageId": uuid.uuid4().hex, "role": "ROLE_USER", "parts": [{"text": "wait here"}]}}
    agent = mesh.a2a["travel"]
    agent.stream_ended.clear()
    path, body = ("/v1/agents/travel/message:stream", send) if binding == REST else \
        ("/v1/agents/travel", rpc("SendStreamingMessage", send, 9))
    async with mesh.client.stream("POST", path, json=body,
                                  headers={**mesh.auth(), "Accept": "text/event-stream"}) as r:
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                doc = json.loads(line[5:])
                break  # leave after the first event: the connection closes
    task_id = (doc if binding == REST else doc["result"])["task"]["id"]
    await asyncio.wait_for(agent.stream_ended.wait(), 5)
    # the task lives on in the agent (A2A tasks outlive their streams) and can still be cancelled
    r = await mesh.client.post("/v1/agents/travel", json=rpc("CancelTask", {"id": task_id}), headers=mesh.auth())
    assert r.json()["result"]["status"]["state"] == "TASK_STATE_CANCELED"


# ---------------------------------------------------------------------------------------------- two principals
@pytest.mark.parametrize("binding", BINDINGS)
async def test_one_principal_cannot_reach_anothers_tasks(mesh: BridgeMesh, binding: str) -> None:
    """Through either binding, with the stock SDK client: bob (another client principal, allowed to call the
    agent) gets A2A's TaskNotFoundError for alice's task on get, cancel and subscribe, and does not see it in
    ListTasks, exactly as for a task that does not exist; alice, the owner, does all of it."""
    tls = tls_context(mesh.bundle)
    async with httpx.AsyncClient(verify=tls, timeout=10, headers=mesh.auth("alice@example.org")) as a_http, \
            httpx.AsyncClient(verify=tls, timeout=10, headers=mesh.auth("bob@example.org")) as b_http:
        alice, bob = sdk(a_http, mesh, binding), sdk(b_http, mesh, binding)
        bob_streams = sdk(b_http, mesh, binding, streaming=True)
        (first,) = await events(alice, message("wait: alice's trip", immediately=True))
        task_id = first.task.id
        for attack in (lambda: bob.get_task(a2a_pb2.GetTaskRequest(id=task_id)),
                       lambda: bob.cancel_task(a2a_pb2.CancelTaskRequest(id=task_id)),
                       lambda: anext(bob_streams.subscribe(a2a_pb2.SubscribeToTaskRequest(id=task_id)))):
            with pytest.raises(TaskNotFoundError):
                await attack()
        assert task_id not in {t.id for t in (await bob.list_tasks(a2a_pb2.ListTasksRequest())).tasks}
        # the owner: the same requests succeed
        assert (await alice.get_task(a2a_pb2.GetTaskRequest(id=task_id))).id == task_id
        assert task_id in {t.id for t in (await alice.list_tasks(a2a_pb2.ListTasksRequest())).tasks}
        cancelled = await alice.cancel_task(a2a_pb2.CancelTaskRequest(id=task_id))
        assert cancelled.status.state == a2a_pb2.TASK_STATE_CANCELED
