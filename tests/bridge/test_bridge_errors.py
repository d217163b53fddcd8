"""Every gRPC status a real agent returns, as the HTTP status, headers and error body of the bridge."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import pytest
from bridgekit import BridgeMesh

pytestmark = pytest.mark.asyncio(loop_scope="module")

FAIL = "/v1/agents/alpha/bridgetest.v1.Probe/Fail"
SLOW = "/v1/agents/alpha/bridgetest.v1.Probe/Slow"
INVOKE = "/v1/agents/{}/agentmesh.v1.Agent/Invoke"

MAPPING = [
    (grpc.StatusCode.INVALID_ARGUMENT, 400), (grpc.StatusCode.FAILED_PRECONDITION, 400),
    (grpc.StatusCode.OUT_OF_RANGE, 400), (grpc.StatusCode.UNAUTHENTICATED, 401),
    (grpc.StatusCode.PERMISSION_DENIED, 403), (grpc.StatusCode.NOT_FOUND, 404),
    (grpc.StatusCode.ALREADY_EXISTS, 409), (grpc.StatusCode.ABORTED, 409),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 429), (grpc.StatusCode.CANCELLED, 499),
    (grpc.StatusCode.UNIMPLEMENTED, 501), (grpc.StatusCode.UNAVAILABLE, 503),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 504), (grpc.StatusCode.INTERNAL, 500),
    (grpc.StatusCode.UNKNOWN, 500), (grpc.StatusCode.DATA_LOSS, 500),
]
HIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS,
          grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@pytest.mark.parametrize(("code", "status"), MAPPING, ids=[c.name for c, _ in MAPPING])
async def test_agent_status_maps_to_http(mesh: BridgeMesh, code: grpc.StatusCode, status: int) -> None:
    r = await mesh.client.post(FAIL, json={"code": code.value[0], "message": "secret internals at line 42"},
                               headers=mesh.auth())
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"code", "message", "details"} and body["code"] == code.name
    if code in HIDDEN:
        assert "secret" not in r.text
    else:
        assert body["message"] == "secret internals at line 42"  # the agent chose to say it
    if code == grpc.StatusCode.UNAUTHENTICATED:
        assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_public_error_details_pass_debug_info_does_not(mesh: BridgeMesh) -> None:
    r = await mesh.client.post(FAIL, json={"code": 9, "message": "not now", "withDetails": True},
                               headers=mesh.auth())
    assert r.status_code == 400
    assert r.json() == {"code": "FAILED_PRECONDITION", "message": "not now", "details": [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "PROBE", "domain": "bridgetest"}]}
    assert "Traceback" not in r.text


async def test_rate_limited_call_is_429_with_retry_after_and_ratelimit_headers(mesh: BridgeMesh) -> None:
    auth = mesh.auth("limited@example.org")
    assert (await mesh.client.post(INVOKE.format("alpha"), json={}, headers=auth)).status_code == 200
    r = await mesh.client.post(INVOKE.format("alpha"), json={}, headers=auth)
    assert r.status_code == 429, r.text
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.headers["ratelimit-limit"] == "1" and r.headers["ratelimit-remaining"] == "0"
    assert int(r.headers["ratelimit-reset"]) >= 1
    body = r.json()
    assert body["code"] == "RESOURCE_EXHAUSTED"
    assert body["details"][0]["@type"] == "type.googleapis.com/google.rpc.RetryInfo"
    assert body["details"][0]["retryDelay"].endswith("s")
    # another principal has its own bucket
    assert (await mesh.client.post(INVOKE.format("alpha"), json={}, headers=mesh.auth())).status_code == 200


async def test_agent_down_is_503_fast(mesh: BridgeMesh) -> None:
    for _ in range(2):
        start = time.perf_counter()
        r = await mesh.client.post(INVOKE.format("down"), json={}, headers=mesh.auth())
        assert r.status_code == 503 and r.json() == {
            "code": "UNAVAILABLE", "message": "agent 'down' is unavailable", "details": []}
        assert time.perf_counter() - start < 1.5
    r = await mesh.client.get("/readyz")
    assert r.status_code == 503 and r.json() == {"status": "unready", "unready": ["down", "mute"]}


async def test_agent_that_accepts_but_never_answers_is_503_within_the_connect_timeout(mesh: BridgeMesh) -> None:
    host, port = mesh.config.agent("mute").address.rsplit(":", 1)
    writers = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # accept the TCP connection, never speak TLS

    server = await asyncio.start_server(silent, host, int(port))
    settings = mesh.app.state.gateway.settings
    settings.connect_timeout = 0.3
    try:
        start = time.perf_counter()
        r = await mesh.client.post(INVOKE.format("mute"), json={}, headers=mesh.auth())
        assert r.status_code == 503 and "mute" in r.json()["message"]
        assert time.perf_counter() - start < 1.5
    finally:
        settings.connect_timeout = 2.0
        server.close()
        for w in writers:
            w.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


@pytest.mark.parametrize("header", [("grpc-timeout", "200m"), ("x-request-timeout", "0.2")])
async def test_deadline_header_gives_504_and_cancels_the_agent(mesh: BridgeMesh, header: tuple[str, str]) -> None:
    probe = mesh.probes["alpha"]
    probe.cancelled.clear()
    start = time.perf_counter()
    r = await mesh.client.post(SLOW, json={"seconds": 3}, headers={**mesh.auth(), header[0]: header[1]})
    assert r.status_code == 504 and r.json()["code"] == "DEADLINE_EXCEEDED"
    assert r.json()["message"] == "agent 'alpha' did not answer within 0.2s"
    assert time.perf_counter() - start < 1.5
    await asyncio.wait_for(probe.cancelled.wait(), 3)


async def test_deadline_within_the_limit_lets_slow_calls_finish(mesh: BridgeMesh) -> None:
    r = await mesh.client.post(SLOW, json={"seconds": 0.05}, headers={**mesh.auth(), "grpc-timeout": "2S"})
    assert r.status_code == 200 and r.json()["name"] == "slept"


@pytest.mark.parametrize("header", [("grpc-timeout", "5x"), ("grpc-timeout", "123456789S"), ("grpc-timeout", "-1S"),
                                    ("x-request-timeout", "soon"), ("x-request-timeout", "nan"),
                                    ("x-request-timeout", "-2"), ("x-request-timeout", "0")])
async def test_invalid_deadline_header_is_400(mesh: BridgeMesh, header: tuple[str, str]) -> None:
    r = await mesh.client.post(SLOW, json={}, headers={**mesh.auth(), header[0]: header[1]})
    assert r.status_code == 400 and r.json()["code"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize("path", [
    "/v1/agents/nobody/agentmesh.v1.Agent/Invoke",  # unknown agent
    "/v1/agents/alpha/agentmesh.v1.Agent/Nope",  # unknown method
    "/v1/agents/alpha/nope.v1.Svc/Invoke",  # unknown service
    "/v1/agents/beta/bridgetest.v1.Probe/Echo",  # a service beta does not have
    "/v1/agents/alpha/agentmesh.v1.Agent/Invoke/extra",
    "/v1/agents/alpha", "/v1/agents/", "/v1/agents//agentmesh.v1.Agent/Invoke",
])
async def test_unknown_agent_or_method_is_404(mesh: BridgeMesh, path: str) -> None:
    r = await mesh.client.post(path, json={}, headers=mesh.auth())
    assert r.status_code == 404, r.text
    assert r.json()["code"] == "NOT_FOUND"


async def test_unknown_route_outside_the_agents_is_a_json_404(mesh: BridgeMesh) -> None:
    r = await mesh.client.get("/nothing/here")
    assert r.status_code == 404 and r.json() == {"code": "NOT_FOUND", "message": "no such route", "details": []}
    r = await mesh.client.post("/healthz")
    assert r.status_code == 405 and r.json()["code"] == "UNIMPLEMENTED"


async def test_bridge_without_its_own_token_answers_503_never_401(mesh: BridgeMesh,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from agentmesh.errors import TokenError

    async def no_token() -> str:
        raise TokenError("the control plane refused to issue a token")

    monkeypatch.setattr(mesh.nodes["bridge"].tokens, "token", no_token)
    monkeypatch.setattr(mesh.nodes["bridge"].tokens, "cached", lambda: None)  # nothing fetched in advance either
    for path in (INVOKE.format("alpha"), "/v1/agents/alpha/bridgetest.v1.Probe/Ticks"):
        r = await mesh.client.post(path, json={}, headers=mesh.auth())
        assert r.status_code == 503, r.text
        assert r.json()["message"] == "the bridge cannot reach the mesh right now"
