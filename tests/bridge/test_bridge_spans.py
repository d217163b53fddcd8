"""The bridge's HTTP server spans by the OpenTelemetry conventions (v1.44, docs/http/http-spans.md): named
by the route template that matched (never the raw path), ERROR only for 5xx; the request id on the
bridge's span and on every span of the request in the agents; no span for a probe that succeeds."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import pytest
from bridgekit import BridgeMesh
from opentelemetry.trace import StatusCode

from agentmesh.audit.fastspan import FastSpan, FastTracer
from agentmesh.bridge.middleware import PROBES, EdgeMiddleware

pytestmark = pytest.mark.asyncio(loop_scope="module")

THINGS = "/v1/agents/alpha/v1/things/{id}"  # GET: a google.api.http rule of bridgetest.v1.Probe/Get


def spans(mesh: BridgeMesh) -> list[dict[str, Any]]:
    for node in mesh.nodes.values():
        node.sink.force_flush(5)
    path = mesh.config.audit.jsonl_path
    assert path is not None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def of_trace(mesh: BridgeMesh, traceparent: str, count: int) -> list[dict[str, Any]]:
    """The ``count`` spans of the trace whose traceparent the bridge answered (the agents' end just after
    their status was sent: waited for, bounded)."""
    trace_id = traceparent.split("-")[1]
    until = time.monotonic() + 5
    while len(found := [s for s in spans(mesh) if s["trace_id"] == trace_id]) < count and time.monotonic() < until:
        time.sleep(0.02)
    return found


def edge_spans(mesh: BridgeMesh) -> list[dict[str, Any]]:
    """The bridge's HTTP server spans (an agent's span of an earlier test may end any time)."""
    return [s for s in spans(mesh) if s["service"] == "bridge" and s["kind"] == "server"]


def http_span(found: list[dict[str, Any]]) -> dict[str, Any]:
    (span,) = [s for s in found if s["service"] == "bridge" and s["kind"] == "server"]
    return span


async def test_an_annotated_route_is_named_by_its_template_and_the_request_id_reaches_every_span(
        mesh: BridgeMesh) -> None:
    rid = f"req-{secrets.token_hex(4)}"
    r = await mesh.client.get("/v1/agents/alpha/v1/things/42", params={"verbose": "true"},
                              headers={**mesh.auth("spans@example.org"), "x-request-id": rid})
    assert r.status_code == 200, r.text
    found = await of_trace(mesh, r.headers["traceparent"], 3)
    http = http_span(found)
    assert http["name"] == f"GET {THINGS}", http["name"]
    attrs = http["attributes"]
    port = int(mesh.url.rpartition(":")[2])
    assert attrs | {"agentmesh.txn": "?", "network.peer.port": 0} == {
        "http.request.method": "GET", "http.route": THINGS, "http.response.status_code": 200,
        "url.scheme": "https", "url.path": "/v1/agents/alpha/v1/things/42",
        "server.address": "localhost", "server.port": port,
        "client.address": "127.0.0.1", "network.peer.address": "127.0.0.1", "network.peer.port": 0,
        "agentmesh.agent": "bridge", "agentmesh.target": "alpha", "agentmesh.request_id": rid,
        "enduser.id": "spans@example.org", "agentmesh.txn": "?",
    }  # the query string is not recorded (it may carry request fields): no url.query
    assert http["status"] == "OK" and "verbose" not in json.dumps(http)
    client = next(s for s in found if s["service"] == "bridge" and s["kind"] == "client")
    server = next(s for s in found if s["service"] == "alpha" and s["kind"] == "server")
    assert client["name"] == server["name"] == "bridgetest.v1.Probe/Get"
    assert {s["attributes"]["agentmesh.request_id"] for s in (http, client, server)} == {rid}
    assert {s["attributes"]["agentmesh.txn"] for s in (http, client, server)} == {attrs["agentmesh.txn"]}


async def test_a_4xx_is_no_error_a_route_not_found_has_no_route_and_a_bad_request_id_is_replaced(
        mesh: BridgeMesh) -> None:
    r = await mesh.client.get("/v1/agents/alpha/v1/things/1", params={"nope": "1"},
                              headers={**mesh.auth(), "x-request-id": "bad id\twith spaces"})
    assert r.status_code == 400
    http = http_span(await of_trace(mesh, r.headers["traceparent"], 1))
    assert http["status"] == "OK" and "error.type" not in http["attributes"]  # 4xx: the client's error
    assert http["attributes"]["agentmesh.request_id"] == r.headers["x-request-id"] != "bad id\twith spaces"
    r = await mesh.client.post("/v1/agents/alpha/no.such.Service/M?secret=1", json={}, headers=mesh.auth())
    assert r.status_code == 404
    http = http_span(await of_trace(mesh, r.headers["traceparent"], 1))
    assert http["name"] == "POST" and "http.route" not in http["attributes"]  # never the raw path as a route
    assert http["attributes"]["url.path"] == "/v1/agents/alpha/no.such.Service/M"


async def test_a_5xx_is_an_error_with_its_status_as_the_error_type(mesh: BridgeMesh) -> None:
    r = await mesh.client.post("/v1/agents/down/agentmesh.v1.Agent/Invoke", json={}, headers=mesh.auth())
    assert r.status_code >= 500, r.text  # configured, never started
    http = http_span(await of_trace(mesh, r.headers["traceparent"], 1))
    assert http["status"] == "ERROR" and http["attributes"]["error.type"] == str(r.status_code)
    assert http["attributes"]["http.route"] == "/v1/agents/down/agentmesh.v1.Agent/Invoke"


async def test_probes_that_succeed_leave_no_span_and_one_that_fails_does(mesh: BridgeMesh) -> None:
    before = len(edge_spans(mesh))
    for _ in range(3):
        r = await mesh.client.get("/healthz")
        assert r.status_code == 200 and "traceparent" not in r.headers and r.headers["x-request-id"]
    r = await mesh.client.get("/openapi.json")  # not a probe: traced
    assert r.status_code == 200 and "traceparent" in r.headers
    after = edge_spans(mesh)[before:]
    assert [(s["name"], s["attributes"]["http.route"]) for s in after] == [("GET /openapi.json", "/openapi.json")]
    r = await mesh.client.get("/readyz")  # agents "down" and "mute" never answer: a probe that fails
    assert r.status_code == 503 and "traceparent" not in r.headers  # (its span starts once it failed)
    (failed,) = edge_spans(mesh)[before + 1:]
    assert failed["name"] == "GET /readyz" and failed["attributes"]["http.response.status_code"] == 503
    assert failed["status"] == "ERROR" and failed["attributes"]["error.type"] == "503"
    assert failed["attributes"]["agentmesh.request_id"] == r.headers["x-request-id"]
    assert failed["duration_ms"] > 0  # from when the request arrived


# ------------------------------------------------------------------ the middleware alone, driven as ASGI


async def _serve(middleware: EdgeMiddleware, method: str, path: str) -> list[tuple[bytes, bytes]]:
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "scheme": "http",
             "headers": [(b"host", b"bridge.example.org")], "client": ("10.0.0.7", 40000), "query_string": b""}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    await middleware(scope, receive, send)
    return list(sent[0]["headers"])


async def _answer(scope: Any, receive: Any, send: Any) -> None:
    if scope["path"] == "/boom":
        raise RuntimeError("secret detail")
    status = 503 if scope["path"] == "/readyz" and scope["method"] == "HEAD" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _edge(quiet: tuple[str, ...]) -> tuple[EdgeMiddleware, list[FastSpan]]:
    ended: list[FastSpan] = []
    tracer = FastTracer("bridge", on_end=ended.append)
    return EdgeMiddleware(_answer, tracer=lambda: tracer, agent="bridge", quiet=quiet), ended


async def test_probes_are_quiet_unless_the_switch_and_a_failed_one_is_traced() -> None:
    quiet, ended = _edge(PROBES)  # create_app's default (audit.trace_housekeeping: false)
    assert not any(k == b"traceparent" for k, _ in await _serve(quiet, "GET", "/readyz"))
    assert ended == []
    await _serve(quiet, "HEAD", "/readyz")  # 503: a failed probe
    (failed,) = ended
    assert (failed.name, failed.attributes["http.response.status_code"], failed.status_code) == (
        "HEAD", 503, StatusCode.ERROR)  # (no Starlette router here: no route)
    assert failed.attributes["error.type"] == "503" and failed.start_time < failed.end_time  # type: ignore[operator]
    traced, ended = _edge(())  # audit.trace_housekeeping: true
    assert any(k == b"traceparent" for k, _ in await _serve(traced, "GET", "/readyz"))
    assert [s.name for s in ended] == ["GET"]


async def test_an_unknown_verb_and_an_escaping_exception_are_recorded_without_caller_text() -> None:
    edge, ended = _edge(())
    await _serve(edge, "BREW", "/coffee")  # (httptools refuses such a request line; h11 lets it through)
    (brew,) = ended
    assert brew.name == "HTTP" and brew.attributes["http.request.method"] == "_OTHER"
    assert "BREW" not in repr(brew.attributes)
    assert (brew.attributes["server.address"], brew.attributes["server.port"]) == ("bridge.example.org", 80)
    assert brew.attributes["client.address"] == "10.0.0.7" and brew.attributes["network.peer.port"] == 40000
    with pytest.raises(RuntimeError):
        await _serve(edge, "GET", "/boom")
    boom = ended[-1]
    assert boom.status_code is StatusCode.ERROR and boom.attributes["error.type"] == "builtins.RuntimeError"
    assert "secret detail" not in repr(boom.attributes) + repr(boom.status_description)
