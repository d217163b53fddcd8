"""The edge: authentication, header stripping, path traversal, bad input, CORS, and no secret in any log."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bridgekit import BridgeMesh, tls_context
from support import TD

from agentmesh.tokens import TokenAuthority

pytestmark = pytest.mark.asyncio(loop_scope="module")

ECHO = "/v1/agents/alpha/bridgetest.v1.Probe/Echo"
INVOKE = "/v1/agents/alpha/agentmesh.v1.Agent/Invoke"


async def raw_http(mesh: BridgeMesh, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Sends exactly these bytes (no client-side URL normalisation) and reads one response."""
    port = int(mesh.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("localhost", port, ssl=tls_context(mesh.bundle),
                                                   server_hostname="localhost")
    try:
        writer.write(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body)
        await writer.drain()
        status_line = await reader.readline()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        data = await reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, data
    finally:
        writer.close()


def request_head(method: str, path: str, *headers: str) -> str:
    return "\n".join([f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close", *headers, ""])


# ------------------------------------------------------------------------------------------ auth
async def test_missing_token_is_401_with_the_realm(mesh: BridgeMesh) -> None:
    for headers in ({}, {"authorization": "Basic dXNlcjpwYXNz"}, {"authorization": "Bearer"}):
        r = await mesh.client.post(INVOKE, json={}, headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Bearer realm="agentmesh"'
        assert r.json() == {"code": "UNAUTHENTICATED", "message": "missing bearer token", "details": []}


async def test_invalid_tokens_are_401_invalid_token(mesh: BridgeMesh, tmp_path: Path) -> None:
    (tmp_path / "evil").mkdir()
    evil = TokenAuthority.ensure(tmp_path / "evil", issuer=mesh.config.tokens.issuer)
    real = mesh.authority.clock
    mesh.authority.clock = lambda: time.time() - 3600
    try:
        expired = mesh.token(ttl=60)
    finally:
        mesh.authority.clock = real
    bridge = mesh.nodes["bridge"]
    tokens = {
        "garbage": "not.a.jwt",
        "forged": evil.issue(sub="alice@example.org", roles=["client"], audience="agentmesh", ttl=60),
        "expired": expired,
        "other audience": mesh.authority.issue(sub="alice@example.org", roles=["client"], audience="x", ttl=60),
        "agent token": mesh.authority.issue(sub=str(bridge.spiffe_id), roles=[], audience="agentmesh", ttl=60,
                                            cnf_thumbprint=bridge.identity.thumbprint),
        "bound token": mesh.authority.issue(sub="alice@example.org", roles=["client"], audience="agentmesh",
                                            ttl=60, cnf_thumbprint=bridge.identity.thumbprint),
    }
    before = mesh.probes["alpha"].calls
    for what, token in tokens.items():
        r = await mesh.client.post(ECHO, json={}, headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 401, what
        assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"', what
        assert token not in r.text
    assert mesh.probes["alpha"].calls == before  # nothing reached the agent


async def test_unauthenticated_requests_learn_nothing_about_routes(mesh: BridgeMesh) -> None:
    before = mesh.probes["alpha"].calls
    for path in ("/v1/agents/nobody/x.Y/Z", "/v1/agents/alpha/v1/things/1", "/v1/agents/alpha%2F..%2Fbeta/x/y",
                 ECHO):
        r = await mesh.client.post(path, json={})
        assert r.status_code == 401, path
    assert mesh.probes["alpha"].calls == before


# ------------------------------------------------------------------------------------------ headers
async def test_client_identity_headers_never_reach_the_agent(mesh: BridgeMesh) -> None:
    mallory = mesh.token("mallory@example.org", roles=["admin", "client"])
    # a genuine transaction token for mallory, exchanged by the bridge itself: its own link would verify
    mallory_txn = (await mesh.nodes["bridge"].exchange(mallory)).token
    r = await mesh.client.post(ECHO, json={"name": "h"}, headers={
        **mesh.auth("alice@example.org"),
        "txn-token": mallory_txn,
        "txn-links": "evil",
        "x-agentmesh-subject-token": mallory,  # (the headers of the delegation before transaction tokens)
        "x-agentmesh-actors": f"spiffe://{TD}/agent/alpha",
        "x-agentmesh-principal": "evil-principal",
        "x-agentmesh-peer": "evil-peer",
        "x-forwarded-client-cert": "By=evil;URI=spiffe://example.org/agent/alpha",
        "x-client-cert": "evil", "x-ssl-client-cert": "evil", "x-spiffe-id": "evil",
        "grpc-metadata-x-agentmesh-principal": "evil", "grpc-metadata-authorization": "evil",
        "grpc-metadata-custom": "evil", "x-custom": "evil", "user-agent": "evil-agent", "cookie": "evil=1",
        "x-request-id": "rid-1",
    })
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["principal"] == "alice@example.org"
    assert reply["chain"] == [f"spiffe://{TD}/agent/bridge"]
    md = reply["metadata"]
    assert set(md) <= {"x-request-id", "authorization", "txn-token", "txn-links", "traceparent", "tracestate",
                       "user-agent"}, md
    assert md["x-request-id"] == "rid-1"
    assert not any("evil" in v for v in md.values()), md


# ------------------------------------------------------------------------------------------ paths
@pytest.mark.parametrize("path", [
    "/v1/agents/beta%2F..%2Falpha/bridgetest.v1.Probe/Echo",
    "/v1/agents/alpha/bridgetest.v1.Probe%2FEcho",
    "/v1/agents/alpha/bridgetest%2Ev1.Probe/Echo",
    "/v1/agents/alpha/bridgetest.v1.Probe/%2e%2e",
    "/v1/agents/beta/../alpha/bridgetest.v1.Probe/Echo",
    "/v1/agents/beta/./agentmesh.v1.Agent/Invoke",
    "/v1/agents/alpha/v1/echo/a%2Fb",
    "/v1/agents/alpha/v1/echo/a%5Cb",
    "/v1/agents/alpha/v1/echo/a\\b",
    "/v1/agents/alpha/v1/echo/%00",
    "/v1/agents/alpha/v1/echo/%ff",
])
async def test_encoded_separators_and_dot_segments_never_route(mesh: BridgeMesh, path: str) -> None:
    before = mesh.probes["alpha"].calls
    status, _, body = await raw_http(mesh, request_head("POST", path, f"Authorization: Bearer {mesh.token()}",
                                                        "Content-Type: application/json", "Content-Length: 2"), b"{}")
    assert status == 400, body
    assert json.loads(body)["code"] == "INVALID_ARGUMENT"
    assert mesh.probes["alpha"].calls == before


@pytest.mark.parametrize("path", ["/openapi%2Ejson", "/static/..%2Fapp.py", "/static/../app.py", "/healthz/.."])
async def test_encoded_paths_outside_the_agents_are_refused_too(mesh: BridgeMesh, path: str) -> None:
    status, _, _ = await raw_http(mesh, request_head("GET", path))
    assert status == 400


async def test_double_encoding_is_just_a_name(mesh: BridgeMesh) -> None:
    r = await mesh.client.post("/v1/agents/alpha/v1/echo/a%252Fb", json={}, headers=mesh.auth())
    assert r.status_code == 200 and r.json()["name"] == "a%2Fb"


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(("body", "needle"), [
    (b"{", "not valid JSON"),
    (b'{"name": "\xff"}', "UTF-8"),
    (b'{"nope": 1}', "nope"),
    (b'{"name": 5}', "name"),
    (b'{"payload": {"i32": "x"}}', "i32"),
    (b'{"payload": {"i32": 3000000000}}', "i32"),
    (b'{"payload": {"left": "a", "right": 1}}', "choice"),
    (b'{"payload": {"color": "PURPLE"}}', "PURPLE"),
    (b'{"payload": {"text": "\\ud800"}}', "text"),
    (b'{"payload": {"i64": ' + b"9" * 5000 + b"}}", "JSON"),
    (b'{"payload": {"i32": NaN}}', "NaN is not a JSON value"),  # Python's parser takes them: refused
    (b'{"payload": {"i32": -Infinity}}', "-Infinity is not a JSON value"),
    (b"[]", "JSON object"),
    (b'"x"', "JSON object"),
])
async def test_bad_json_is_400_naming_the_problem(mesh: BridgeMesh, body: bytes, needle: str) -> None:
    r = await mesh.client.post(ECHO, content=body, headers={**mesh.auth(), "content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "INVALID_ARGUMENT" and needle in r.json()["message"], r.text


@pytest.mark.parametrize("body", [
    b'{"payload": {"data": {"a": ' + b"[" * 30_000 + b"]" * 30_000 + b"}}}",
    b"[" * 50_000,
    b'{"payload": {"anyValue": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}}",
    # under the byte-level limit, too deep for protobuf:
    b'{"payload": {"data": {"a": ' + b"[" * 60 + b"]" * 60 + b"}}}",
])
async def test_deep_nesting_is_400_not_a_crash(mesh: BridgeMesh, body: bytes) -> None:
    r = await mesh.client.post(ECHO, content=body, headers={**mesh.auth(), "content-type": "application/json"})
    assert r.status_code == 400, r.text[:200]
    assert "deep" in r.json()["message"] or "depth" in r.json()["message"]


async def test_brackets_inside_strings_do_not_count_as_nesting(mesh: BridgeMesh) -> None:
    text = "[{" * 1000
    r = await mesh.client.post(ECHO, json={"payload": {"text": text}}, headers=mesh.auth())
    assert r.status_code == 200 and r.json()["payload"]["text"] == text


async def test_body_over_the_limit_is_413_with_or_without_content_length(mesh: BridgeMesh) -> None:
    big = b'{"name": "' + b"x" * (64 * 1024) + b'"}'
    r = await mesh.client.post(ECHO, content=big, headers={**mesh.auth(), "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "INVALID_ARGUMENT"

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 4096):
            yield big[i:i + 4096]

    r = await mesh.client.post(ECHO, content=chunks(), headers={**mesh.auth(), "content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 413
    ok = b'{"name": "' + b"x" * 1000 + b'"}'
    r = await mesh.client.post(ECHO, content=ok, headers={**mesh.auth(), "content-type": "application/json"})
    assert r.status_code == 200


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                   "application/json; charset=latin-1", None])
async def test_wrong_content_type_is_415(mesh: BridgeMesh, ctype: str | None) -> None:
    headers = mesh.auth() if ctype is None else {**mesh.auth(), "content-type": ctype}
    r = await mesh.client.post(ECHO, content=b'{"name": "x"}', headers=headers)
    assert r.status_code == 415 and r.json()["code"] == "INVALID_ARGUMENT"


async def test_json_suffix_content_types_are_accepted(mesh: BridgeMesh) -> None:
    r = await mesh.client.post(ECHO, content=b'{"name": "x"}',
                               headers={**mesh.auth(), "content-type": "application/merge-patch+json"})
    assert r.status_code == 200


# ------------------------------------------------------------------------------------------ CORS
ALLOWED = "https://app.example.com"


async def test_cors_preflight_from_an_allowed_origin(mesh: BridgeMesh) -> None:
    r = await mesh.client.options(ECHO, headers={"origin": ALLOWED, "access-control-request-method": "POST",
                                                 "access-control-request-headers": "authorization, content-type"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in r.headers
    r = await mesh.client.post(ECHO, json={}, headers={**mesh.auth(), "origin": ALLOWED})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ALLOWED
    assert "x-request-id" in r.headers["access-control-expose-headers"]


@pytest.mark.parametrize("origin", ["https://evil.example.com", "https://app.example.com.evil.com", "null",
                                    "http://app.example.com"])
async def test_cors_from_another_origin_gets_no_cors_headers(mesh: BridgeMesh, origin: str) -> None:
    r = await mesh.client.options(ECHO, headers={"origin": origin, "access-control-request-method": "POST"})
    assert r.status_code == 403
    assert not [h for h in r.headers if h.startswith("access-control-")]
    r = await mesh.client.post(ECHO, json={}, headers={**mesh.auth(), "origin": origin})
    assert not [h for h in r.headers if h.startswith("access-control-")]


async def test_cors_preflight_with_a_header_not_allowed_gets_no_cors_headers(mesh: BridgeMesh) -> None:
    r = await mesh.client.options(ECHO, headers={"origin": ALLOWED, "access-control-request-method": "POST",
                                                 "access-control-request-headers": "x-agentmesh-principal"})
    assert r.status_code == 400 and not [h for h in r.headers if h.startswith("access-control-")]


# ------------------------------------------------------------------------------------------ logs
async def test_no_token_in_any_log(mesh: BridgeMesh, caplog: pytest.LogCaptureFixture,
                                   capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    token = mesh.token("logged@example.org")
    signature = token.split(".")[2]
    auth = {"authorization": f"Bearer {token}"}
    await mesh.client.post(INVOKE, json={"id": "x"}, headers={**auth, "traceparent": "00-" + "a" * 32 + "-" + "b" * 16
                                                                + "-01"})
    await mesh.client.post(INVOKE + f"?access_token={token}", json={}, headers=auth)
    await mesh.client.post(INVOKE, content=b"{", headers={**auth, "content-type": "application/json"})
    await mesh.client.post("/v1/agents/beta/agentmesh.v1.Agent/Describe", json={}, headers=auth)  # 403
    await mesh.client.post(INVOKE, json={}, headers={"authorization": f"Bearer {token}x"})  # 401
    await mesh.client.post(INVOKE, json={}, headers={"authorization": f"Bearer {token}", "txn-token": token,
                                                     "txn-links": token, "x-agentmesh-subject-token": token})
    await mesh.client.post("/v1/agents/alpha/bridgetest.v1.Probe/Ticks", json={"count": 2}, headers=auth)
    await mesh.client.get("/v1/agents", headers=auth)
    out, err = capfd.readouterr()
    server_side = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))
    for text in (server_side, out, err):
        assert token not in text and signature not in text
        assert "Bearer" not in text
    access = [r.getMessage() for r in caplog.records if r.name == "agentmesh.bridge.access"]
    assert len(access) == 8, access
    assert re.fullmatch(r"POST /v1/agents/alpha/agentmesh\.v1\.Agent/Invoke 200 [0-9.]+ms "
                        r"principal=logged@example\.org trace=a{32} request_id=[0-9a-f]{32}", access[0]), access[0]
    assert " 400 " in access[2] and " 403 " in access[3] and " 401 " in access[4] and "principal=-" in access[4]
    assert all("access_token" not in line for line in access)


async def test_health_and_docs_need_no_token(mesh: BridgeMesh) -> None:
    assert (await mesh.client.get("/healthz")).json() == {"status": "ok"}
    r = await mesh.client.get("/docs")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert '<script src="/static/docs.js"' in r.text and "http" not in r.text.split("<body>")[0].replace(
        'content="width', "")
    js = await mesh.client.get("/static/docs.js")
    assert js.status_code == 200 and "innerHTML" not in js.text and "openapi.json" in js.text
    assert (await mesh.client.get("/static/docs.css")).status_code == 200


async def test_plain_http_is_refused_on_the_tls_port(mesh: BridgeMesh) -> None:
    port = int(mesh.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(100), 5)
    writer.close()
    assert b"200" not in data


async def test_tls_client_must_trust_the_bridge_certificate(mesh: BridgeMesh) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=mesh.url) as client:  # system CAs: the mesh CA is not among them
        with pytest.raises(httpx.ConnectError):
            await client.get("/healthz")
    ctx = ssl.create_default_context(cafile=str(mesh.bundle))
    async with httpx.AsyncClient(base_url=mesh.url, verify=ctx) as client:
        assert (await client.get("/healthz")).status_code == 200
