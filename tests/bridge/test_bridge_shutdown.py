"""The bridge's stop: requests in flight get ``grace_period`` (not a fixed 10 s); one still running at its
end is answered 503 UNAVAILABLE in the bridge's JSON shape (uvicorn alone answers a plain-text 500); idle
keep-alive connections do not hold the stop up. The whole path with real processes is in
tests/lifecycle/test_up_supervises.py."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from agentmesh.bridge.server import AnswerAtGraceEnd, DrainingServer, uvicorn_options
from agentmesh.configfile import parse_config
from agentmesh.pki import CertificateAuthority, write_identity


def test_uvicorn_waits_the_configured_grace_period(tmp_path: Path) -> None:
    config = parse_config({"trust_domain": "example.org", "agents": {}, "grace_period": "3s",
                           "bridge": {"tls": False}}, tmp_path)
    assert uvicorn_options(config)["timeout_graceful_shutdown"] == 3.0


async def _never_answers(scope: Any, receive: Any, send: Any) -> None:
    await asyncio.Event().wait()


async def _starts_then_hangs(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await asyncio.Event().wait()


async def _run_cancelled(app: Any, scope_type: str = "http") -> tuple[list[dict[str, Any]], asyncio.Task[None]]:
    sent: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def call() -> None:
        arrived.set()
        await AnswerAtGraceEnd(app)({"type": scope_type}, receive, send)

    task = asyncio.ensure_future(call())
    await arrived.wait()  # (the app is now waiting inside: nothing yields between the two)
    task.cancel()  # what uvicorn does to the requests still running when the grace period ends
    await asyncio.wait({task})
    return sent, task


async def test_a_request_still_running_at_the_end_is_answered_503_json() -> None:
    sent, task = await _run_cancelled(_never_answers)
    assert not task.cancelled() and task.exception() is None
    start, body = sent
    headers = dict(start["headers"])
    assert start["status"] == 503 and headers[b"content-type"] == b"application/json"
    assert b"retry-after" in headers and headers[b"connection"] == b"close"
    assert json.loads(body["body"])["code"] == "UNAVAILABLE"
    assert int(headers[b"content-length"]) == len(body["body"])


async def test_a_response_already_started_is_just_cut() -> None:
    sent, task = await _run_cancelled(_starts_then_hangs)
    assert task.cancelled() and [m["status"] for m in sent] == [200]


async def test_lifespan_passes_through_untouched() -> None:
    sent, task = await _run_cancelled(_never_answers, scope_type="lifespan")
    assert task.cancelled() and sent == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize(("server_class", "held"), [(DrainingServer, False), (uvicorn.Server, True)],
                         ids=["draining", "uvicorn-alone"])
async def test_an_idle_keep_alive_tls_connection_does_not_hold_the_stop(tmp_path: Path, server_class: type,
                                                                        held: bool) -> None:
    """A client keeps its TLS connection open and does not read it (as a pooled HTTP client does between
    requests): uvicorn alone waits for its reply to the TLS close until the grace period ends."""
    ca = CertificateAuthority.init(tmp_path / "ca", "example.org")
    write_identity(ca.issue("bridge", dns=["localhost"]), tmp_path / "id")
    port = _free_port()
    server = server_class(uvicorn.Config(_ok, host="127.0.0.1", port=port, lifespan="off", log_level="error",
                                         timeout_graceful_shutdown=2, ssl_certfile=str(tmp_path / "id" / "cert.pem"),
                                         ssl_keyfile=str(tmp_path / "id" / "key.pem")))
    serving = asyncio.ensure_future(server.serve())
    ctx = ssl.create_default_context(cafile=str(tmp_path / "id" / "bundle.pem"))
    client = None
    try:
        while not server.started:
            await asyncio.sleep(0.01)

        def request() -> ssl.SSLSocket:
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            conn = ctx.wrap_socket(raw, server_hostname="localhost")
            conn.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")  # keep-alive
            answer = b""
            while not answer.endswith(b"ok"):
                answer += conn.recv(4096)
            return conn  # open, and nobody reads it any more

        client = await asyncio.to_thread(request)
        started = time.monotonic()
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        took = time.monotonic() - started
        assert (took >= 2) is held, took  # uvicorn alone: the whole grace period (2 s) for an idle connection
    finally:
        if client is not None:
            client.close()
        if not serving.done():
            server.force_exit = True
            await serving
