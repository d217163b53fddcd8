"""Slow, idle and oversized clients at the bridge (issue 13 item 1): real uvicorn over TLS with the bridge's
own options (``uvicorn_options``: its protocol, its loop) on port 0, real sockets from loopback addresses
127.0.0.x; time passes only through the short timeouts configured here, waited for on the sockets."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from support import TD

from agentmesh.bridge.protocol import ConnectionGate
from agentmesh.configfile import parse_config
from agentmesh.errors import ConfigError
from agentmesh.pki import CertificateAuthority, write_identity

LONG = "30s"  # a timeout that does not run out during a test
HEAD = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: a"  # a request head, never finished


def app() -> Starlette:
    """A stand-in for the bridge app: the limits are below it, in the HTTP protocol."""

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def upload(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(len(await request.body())))

    return Starlette(routes=[Route("/healthz", healthz), Route("/upload", upload, methods=["POST"])])


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slowloris")
    ca = CertificateAuthority.init(root / "ca", TD)
    write_identity(ca.issue("bridge", dns=["localhost"]), root / "identities" / "bridge")
    return root


@contextlib.contextmanager
def bridge(root: Path, **section: Any) -> Iterator[int]:
    """The bridge's uvicorn (``Server.run``: its own loop from the options) in a thread; yields its port."""
    from agentmesh.bridge.server import uvicorn_options

    config = parse_config({"trust_domain": TD, "agents": {}, "ca": str(root / "ca"),
                           "identities": str(root / "identities"), "bridge": section}, root)
    opts = uvicorn_options(config, listen="127.0.0.1:0")
    opts.pop("workers")
    opts.update(log_level="warning", timeout_graceful_shutdown=1)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    server = uvicorn.Server(uvicorn.Config(app(), **opts))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


def tls(port: int, source: str = "127.0.0.1") -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return CTX.wrap_socket(raw, server_hostname="localhost")


def status(sock: ssl.SSLSocket, request: bytes) -> int:
    """The status of ``request`` on ``sock`` (0: the connection was closed without an answer)."""
    reply = b""
    try:
        sock.sendall(request)
        while b"\r\n\r\n" not in reply and (chunk := sock.recv(65536)):
            reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        length = next((int(line[15:]) for line in head.lower().split(b"\r\n")
                       if line.startswith(b"content-length:")), 0)
        while len(body) < length and (chunk := sock.recv(65536)):
            body += chunk
    except OSError:
        return 0
    return int(reply.split()[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def healthz(port: int, source: str = "127.0.0.200") -> int:
    with tls(port, source) as s:
        return status(s, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")


def closed(socks: list[Any], within: float) -> list[Any]:
    """Those of ``socks`` the server closes within ``within`` seconds (waiting on the sockets)."""
    done: list[Any] = []
    rest = list(socks)
    end = time.monotonic() + within
    while rest and (left := end - time.monotonic()) > 0:
        readable, _, _ = select.select(rest, [], [], left)
        for s in readable:
            s.setblocking(False)
            try:
                data = s.recv(65536)
            except ssl.SSLWantReadError:  # a TLS record with no data for the app (a session ticket)
                continue
            except OSError:  # reset
                data = b""
            finally:
                s.settimeout(10)
            if not data:
                done.append(s)
                rest.remove(s)
    return done


def test_a_slowloris_from_one_address_holds_only_its_share(root: Path) -> None:
    """30 half-sent heads from one address: 4 are kept (``max_pending_per_ip``), the rest closed at once."""
    with bridge(root, max_pending_per_ip=4, head_timeout=LONG, idle_timeout=LONG) as port:
        attack = [tls(port, "127.0.0.2") for _ in range(30)]
        for s in attack:
            with contextlib.suppress(OSError):
                s.sendall(HEAD)
        gone = closed(attack, within=3.0)
        assert len(gone) == 26
        assert closed([s for s in attack if s not in gone], within=0.2) == []  # the 4 are still held
        assert healthz(port, "127.0.0.3") == 200  # another address is served
        for s in attack:
            s.close()


def test_a_request_head_has_a_deadline_however_it_trickles(root: Path) -> None:
    with bridge(root, head_timeout="0.5s", idle_timeout=LONG) as port, tls(port) as s:
        started = time.monotonic()
        for i in range(200):  # a byte at a time, each within the idle timeout: only the head deadline ends it
            s.sendall(HEAD[i % len(HEAD):i % len(HEAD) + 1])
            if closed([s], within=0.05):
                break
        else:
            pytest.fail("a request head trickling for 10 s was never cut off")
        assert 0.4 < time.monotonic() - started < 5.0
        assert healthz(port) == 200


def test_idle_connections_are_closed_and_do_not_lock_others_out(root: Path) -> None:
    """``max_connections: 20`` and 20 TLS connections that never send a byte (the issue's plain-text 503s)."""
    with bridge(root, max_connections=20, idle_timeout="0.5s") as port:
        idle = [tls(port, f"127.0.0.{2 + i}") for i in range(20)]
        assert healthz(port) == 200  # the oldest idle connection made room
        assert healthz(port) == 200
        started = time.monotonic()
        assert len(closed(idle, within=5.0)) == 20  # two evicted, the others after idle_timeout
        assert time.monotonic() - started < 5.0


def test_at_the_cap_half_sent_heads_from_many_addresses_give_way_to_new_clients(root: Path) -> None:
    with bridge(root, max_connections=20, head_timeout=LONG, idle_timeout=LONG) as port:
        attack = []
        for i in range(40):  # 2 per address: under any per-address cap, twice the connection cap
            s = tls(port, f"127.0.0.{2 + i % 20}")
            with contextlib.suppress(OSError):
                s.sendall(HEAD)
            attack.append(s)
        assert [healthz(port) for _ in range(5)] == [200] * 5
        assert len(closed(attack, within=3.0)) == 21  # 20 by the later half, 1 by the first probe (then room)
        for s in attack:
            s.close()


def test_a_request_in_flight_is_never_evicted(root: Path) -> None:
    with bridge(root, max_connections=2, head_timeout=LONG, idle_timeout=LONG, body_timeout=LONG) as port, \
            tls(port, "127.0.0.2") as uploading, tls(port, "127.0.0.3") as idle:
        uploading.sendall(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\r\nab")
        assert healthz(port) == 200  # evicts the idle connection, not the upload
        assert closed([idle], within=3.0) == [idle]
        assert status(uploading, b"cd") == 200


def test_a_request_body_has_a_deadline(root: Path) -> None:
    with bridge(root, body_timeout="0.5s", head_timeout=LONG, idle_timeout=LONG) as port, tls(port) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n0123456789")
        started = time.monotonic()
        assert closed([s], within=5.0) == [s]
        assert 0.4 < time.monotonic() - started < 5.0


def test_a_tls_handshake_has_a_deadline(root: Path) -> None:
    with bridge(root, handshake_timeout="0.5s") as port, \
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw:  # TCP, never a ClientHello
        started = time.monotonic()
        assert closed([raw], within=5.0) == [raw]
        assert 0.4 < time.monotonic() - started < 5.0


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_request_heads_are_bounded_with_either_parser(root: Path, parser: str) -> None:
    big = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * (4 << 20) + b"\r\n\r\n"
    with bridge(root, http_parser=parser, max_head="16KiB") as port:
        with tls(port) as s:
            assert status(s, big) in (431, 400, 0)  # refused before the 4 MiB line is read (0: reset mid-send)
        with tls(port) as s:
            assert status(s, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Ok: " + b"a" * 8000 + b"\r\n\r\n") == 200


def test_a_connection_that_has_been_answered_no_longer_counts_against_its_address(root: Path) -> None:
    """A client's keep-alive pool is not a slowloris: only connections not answered yet are capped."""
    with bridge(root, max_pending_per_ip=2, idle_timeout=LONG) as port:
        pool = [tls(port, "127.0.0.2") for _ in range(2)]
        for s in pool:
            assert status(s, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n") == 200
        more = [tls(port, "127.0.0.2") for _ in range(2)]
        for s in [*pool, *more]:
            assert status(s, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n") == 200
            s.close()


def test_the_gate_releases_each_connection_once() -> None:
    class Conn:
        evicted = 0

        def evict(self) -> None:
            self.evicted += 1

    gate = ConnectionGate(max_connections=2, max_pending_per_ip=5)
    a, b, c = Conn(), Conn(), Conn()
    assert gate.admit(a, "x") and gate.admit(b, "y")
    gate.busy(b)
    assert gate.admit(c, "x") and a.evicted == 1  # a was waiting, b busy
    gate.release(a)  # its connection_lost, after the eviction released it
    assert gate.pending == {"x": 1, "y": 1} and set(gate.open) == {b, c}
    gate.answered(c)
    gate.release(c, answered=True)
    gate.busy(b)
    assert gate.pending == {"y": 1} and not gate.admit(Conn(), "z") == (len(gate.open) < 2)


@pytest.mark.parametrize("key", ["handshake_timeout", "idle_timeout", "head_timeout", "body_timeout", "max_head"])
def test_a_limit_cannot_be_switched_off_with_zero(root: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=f"bridge.{key}"):
        parse_config({"trust_domain": TD, "agents": {}, "bridge": {key: 0}}, root)
