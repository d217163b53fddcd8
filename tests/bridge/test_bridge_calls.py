"""Calls through the bridge to real agents over mTLS: unary, annotated routes, streams, delegation, tracing."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import httpx
import pytest
from bridgekit import BridgeMesh
from support import TD

pytestmark = pytest.mark.asyncio(loop_scope="module")

BRIDGE = f"spiffe://{TD}/agent/bridge"
ECHO = "/v1/agents/alpha/bridgetest.v1.Probe/Echo"
TICKS = "/v1/agents/alpha/bridgetest.v1.Probe/Ticks"


async def test_unary_call_is_delegated_for_the_caller(mesh: BridgeMesh) -> None:
    r = await mesh.client.post("/v1/agents/alpha/agentmesh.v1.Agent/Invoke",
                               json={"id": "t1", "input": [{"text": "hi"}]}, headers=mesh.auth())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"taskId": "t1", "status": "TASK_STATUS_COMPLETED",
                        "output": [{"text": BRIDGE}, {"text": "hi"}]}
    r = await mesh.client.post(ECHO, json={"name": "n"}, headers=mesh.auth("bob@example.org"))
    reply = r.json()
    assert reply["principal"] == "bob@example.org"
    assert reply["chain"] == [BRIDGE] and reply["peer"] == BRIDGE


async def test_json_mapping_round_trips_every_type(mesh: BridgeMesh) -> None:
    payload = {
        "text": "héllo", "i32": -5, "i64": "9007199254740993", "u64": 18446744073709551615, "dbl": 1.5,
        "flt": "NaN", "flag": True, "raw": "aGk=", "color": "COLOR_BLUE", "tags": ["a", "b"],
        "inners": {"k": {"note": "n", "child": {"nums": [1, 2]}}}, "byNumber": {"7": "seven"},
        "data": {"nested": {"list": [1, "x", None, True]}}, "at": "2024-01-02T03:04:05Z", "wait": "1.5s",
        "maybe": "42", "mask": "a.b,c", "left": "L", "opt": "", "anyValue": [1, {"a": None}],
        "list": ["x", 2], "colors": ["COLOR_RED", 2], "s64": "-3", "f32": 4,
    }
    r = await mesh.client.post(ECHO, json={"name": "all", "payload": payload}, headers=mesh.auth())
    assert r.status_code == 200, r.text
    got = r.json()["payload"]
    assert got["i64"] == "9007199254740993" and got["u64"] == "18446744073709551615"  # 64-bit as strings
    assert got["flt"] == "NaN" and got["color"] == "COLOR_BLUE" and got["colors"] == ["COLOR_RED", "COLOR_BLUE"]
    assert got["byNumber"] == {"7": "seven"} and got["data"] == payload["data"] and got["wait"] == "1.500s"
    assert got["maybe"] == "42" and got["opt"] == "" and got["anyValue"] == [1, {"a": None}]
    assert got["inners"]["k"]["child"]["nums"] == [1, 2] and got["at"] == "2024-01-02T03:04:05Z"


async def test_original_proto_field_names_are_accepted(mesh: BridgeMesh) -> None:
    r = await mesh.client.post(ECHO, json={"name": "x", "payload": {"by_number": {"1": "one"}, "any_value": 3}},
                               headers=mesh.auth())
    assert r.status_code == 200, r.text
    assert r.json()["payload"] == {"byNumber": {"1": "one"}, "anyValue": 3}


async def test_empty_body_is_an_empty_request(mesh: BridgeMesh) -> None:
    r = await mesh.client.post("/v1/agents/alpha/bridgetest.v1.Probe/Ping", headers=mesh.auth())
    assert r.status_code == 200 and r.json() == {}
    r = await mesh.client.post("/v1/agents/alpha/agentmesh.v1.Agent/Describe", content=b"{}",
                               headers={**mesh.auth(), "content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200 and r.json() == {"name": "alpha"}


async def test_http_annotations_route_with_path_query_and_body_rules(mesh: BridgeMesh) -> None:
    auth = mesh.auth()
    r = await mesh.client.post("/v1/agents/alpha/v1/echo/caf%C3%A9%20x", json={"payload": {"text": "t"}},
                               headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "café x" and r.json()["payload"] == {"text": "t"}
    r = await mesh.client.get("/v1/agents/alpha/v1/things/42", params=[
        ("verbose", "true"), ("fields", "a"), ("fields", "b"), ("limit", "7"), ("color", "COLOR_RED")], headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "id=42 verbose=True fields=a,b limit=7 color=1"
    r = await mesh.client.delete("/v1/agents/alpha/v1/things/9", headers=auth)  # additional binding
    assert r.status_code == 200 and r.json()["name"].startswith("id=9 ")
    r = await mesh.client.put("/v1/agents/alpha/v1/names/n1", json={"text": "only the payload"}, headers=auth)
    assert r.status_code == 200 and r.json() == {"text": "only the payload"}  # body: payload, response_body
    r = await mesh.client.get("/v1/agents/alpha/v1/things/1", params={"verbose": "yes"}, headers=auth)
    assert r.status_code == 400 and "verbose" in r.json()["message"]
    r = await mesh.client.get("/v1/agents/alpha/v1/things/1", params={"nope": "1"}, headers=auth)
    assert r.status_code == 400 and "nope" in r.json()["message"]
    r = await mesh.client.post("/v1/agents/alpha/v1/things/1", headers=auth)
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET"
    r = await mesh.client.get(ECHO, headers=auth)
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def _sse_events(text: str) -> list[tuple[str, str]]:
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        lines = block.split("\n")
        if all(line.startswith(":") for line in lines):
            events.append(("comment", lines[0]))
            continue
        name = next((line[7:] for line in lines if line.startswith("event: ")), "message")
        data = "\n".join(line[6:] for line in lines if line.startswith("data: "))
        events.append((name, data))
    return events


async def test_server_stream_as_ndjson_and_sse(mesh: BridgeMesh) -> None:
    body = {"count": 3, "interval": 0}
    r = await mesh.client.post(TICKS, json=body, headers=mesh.auth())
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    assert [json.loads(line) for line in r.text.splitlines()] == [{"n": 1}, {"n": 2}, {"n": 3}]
    r = await mesh.client.post(TICKS, json=body, headers={**mesh.auth(), "accept": "text/event-stream"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert _sse_events(r.text) == [("message", '{"n":1}'), ("message", '{"n":2}'), ("message", '{"n":3}')]


async def test_agent_invoke_stream_passes_the_chain(mesh: BridgeMesh) -> None:
    r = await mesh.client.post("/v1/agents/beta/agentmesh.v1.Agent/InvokeStream", json={"id": "s"},
                               headers=mesh.auth())
    events = [json.loads(line) for line in r.text.splitlines()]
    assert [e.get("progress") for e in events[:3]] == [f"{i}:{BRIDGE}" for i in range(3)]
    assert events[-1]["result"]["status"] == "TASK_STATUS_COMPLETED"


async def test_stream_failing_midway_ends_with_an_error_record(mesh: BridgeMesh) -> None:
    body = {"count": 5, "interval": 0, "failAt": 3}
    r = await mesh.client.post(TICKS, json=body, headers={**mesh.auth(), "accept": "text/event-stream"})
    assert r.status_code == 200
    events = _sse_events(r.text)
    assert events[:2] == [("message", '{"n":1}'), ("message", '{"n":2}')]
    assert events[2][0] == "error"
    assert json.loads(events[2][1]) == {"code": "ABORTED", "message": "tick 3 failed", "details": []}
    r = await mesh.client.post(TICKS, json=body, headers=mesh.auth())
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines[-1] == {"error": {"code": "ABORTED", "message": "tick 3 failed", "details": []}}


async def test_stream_refused_before_its_first_message_gets_an_http_status(mesh: BridgeMesh) -> None:
    r = await mesh.client.post(TICKS, json={"count": 2, "failAt": 1}, headers=mesh.auth())
    assert r.status_code == 409 and r.json()["code"] == "ABORTED"
    r = await mesh.client.post(TICKS, json={"count": 2}, headers=mesh.auth(roles=["viewer"]))
    assert r.status_code == 403 and r.json()["code"] == "PERMISSION_DENIED"


async def test_sse_sends_keepalives_on_quiet_streams(mesh: BridgeMesh) -> None:
    settings = mesh.app.state.gateway.settings
    old = settings.keepalive, settings.first_wait
    settings.keepalive, settings.first_wait = 0.05, 0.05
    try:
        r = await mesh.client.post(TICKS, json={"count": 2, "interval": 0.3},
                                   headers={**mesh.auth(), "accept": "text/event-stream"})
    finally:
        settings.keepalive, settings.first_wait = old
    events = _sse_events(r.text)
    assert ("comment", ": keep-alive") in events
    assert [e for e in events if e[0] == "message"] == [("message", '{"n":1}'), ("message", '{"n":2}')]


async def test_client_disconnect_cancels_the_grpc_stream(mesh: BridgeMesh) -> None:
    probe = mesh.probes["alpha"]
    probe.cancelled.clear()
    async with mesh.client.stream("POST", TICKS, json={"count": 1000, "interval": 0.05},
                                  headers={**mesh.auth(), "accept": "text/event-stream"}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                break  # leave after the first event: the connection closes
    await asyncio.wait_for(probe.cancelled.wait(), 5)


async def test_client_disconnect_cancels_a_unary_call(mesh: BridgeMesh) -> None:
    probe = mesh.probes["alpha"]
    probe.cancelled.clear()
    with pytest.raises(httpx.ReadTimeout):
        await mesh.client.post("/v1/agents/alpha/bridgetest.v1.Probe/Slow", json={"seconds": 4},
                               headers=mesh.auth(), timeout=0.3)
    await asyncio.wait_for(probe.cancelled.wait(), 3)


async def test_list_agents_shows_what_the_caller_may_call(mesh: BridgeMesh) -> None:
    r = await mesh.client.get("/v1/agents", headers=mesh.auth())
    assert r.status_code == 200
    agents = {a["name"]: a for a in r.json()["agents"]}
    assert set(agents) == {"alpha", "beta", "down", "mute"}
    beta = {m["method"] for m in agents["beta"]["methods"]}
    assert beta == {"/agentmesh.v1.Agent/Invoke", "/agentmesh.v1.Agent/InvokeStream"}  # Describe denied
    alpha = {m["method"]: m for m in agents["alpha"]["methods"]}
    assert "/bridgetest.v1.Probe/Upload" not in alpha  # client streaming is not exposed
    assert alpha["/bridgetest.v1.Probe/Ticks"]["serverStreaming"] is True
    assert {"httpMethod": "GET", "path": "/v1/agents/alpha/v1/things/{id}"} in \
        alpha["/bridgetest.v1.Probe/Get"]["bindings"]
    r = await mesh.client.get("/v1/agents", headers=mesh.auth(roles=["viewer"]))
    assert r.status_code == 200 and r.json() == {"agents": []}
    assert (await mesh.client.get("/v1/agents")).status_code == 401


async def test_client_streaming_methods_are_not_implemented(mesh: BridgeMesh) -> None:
    r = await mesh.client.post("/v1/agents/alpha/bridgetest.v1.Probe/Upload", json={}, headers=mesh.auth())
    assert r.status_code == 501 and r.json()["code"] == "UNIMPLEMENTED"


def _spans(mesh: BridgeMesh) -> list[dict[str, Any]]:
    for node in mesh.nodes.values():
        node.sink.force_flush(5)
    path = mesh.config.audit.jsonl_path
    assert path is not None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_incoming_traceparent_is_continued_through_the_mesh(mesh: BridgeMesh) -> None:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    token = mesh.token("tracer@example.org")
    r = await mesh.client.post(ECHO, json={"name": "t"}, headers={
        "authorization": f"Bearer {token}", "traceparent": f"00-{trace_id}-{parent}-01"})
    assert r.status_code == 200
    ours = [s for s in _spans(mesh) if s["trace_id"] == trace_id]
    http = next(s for s in ours if s["service"] == "bridge" and s["kind"] == "server")
    client = next(s for s in ours if s["service"] == "bridge" and s["kind"] == "client")
    agent = next(s for s in ours if s["service"] == "alpha" and s["kind"] == "server")
    assert http["parent_span_id"] == parent
    assert client["parent_span_id"] == http["span_id"] and agent["parent_span_id"] == client["span_id"]
    assert http["name"] == f"POST {ECHO}" and http["attributes"]["http.route"] == ECHO  # the catalog's route
    assert http["attributes"]["enduser.id"] == "tracer@example.org"
    assert http["attributes"]["http.response.status_code"] == 200
    assert token not in json.dumps(ours) and token.split(".")[2] not in mesh.config.audit.jsonl_path.read_text()  # type: ignore[union-attr]


async def test_request_id_is_echoed_and_forwarded(mesh: BridgeMesh) -> None:
    r = await mesh.client.post(ECHO, json={}, headers={**mesh.auth(), "x-request-id": "req-123"})
    assert r.headers["x-request-id"] == "req-123" and r.json()["metadata"]["x-request-id"] == "req-123"
    r = await mesh.client.post(ECHO, json={}, headers={**mesh.auth(), "x-request-id": "bad id\twith spaces"})
    rid = r.headers["x-request-id"]
    assert rid != "bad id\twith spaces" and r.json()["metadata"]["x-request-id"] == rid


async def test_many_concurrent_calls(mesh: BridgeMesh) -> None:
    auth = mesh.auth("load@example.org")
    start = time.perf_counter()
    rs = await asyncio.gather(*(mesh.client.post(ECHO, json={"name": str(i)}, headers=auth) for i in range(50)))
    assert [r.json()["name"] for r in rs] == [str(i) for i in range(50)]
    assert time.perf_counter() - start < 10


async def test_bridge_without_a_node_starts_its_own(mesh: BridgeMesh) -> None:
    from bridgekit import serve_app, tls_context

    from agentmesh.bridge import create_app

    app = create_app(mesh.config)  # its lifespan starts and stops a MeshNode of its own
    async with serve_app(app, mesh.config) as url, httpx.AsyncClient(
            base_url=url, verify=tls_context(mesh.bundle)) as client:
        r = await client.post(ECHO, json={"name": "own"}, headers=mesh.auth())
        assert r.status_code == 200 and r.json()["peer"] == BRIDGE
