"""The bridge's HTTPS certificate is reloaded from disk: real uvicorn on port 0 with the bridge's own
options, real TLS verified against the CA bundle, renewed files, no restart and no sleeping."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cryptography import x509
from meshkit import free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from support import TD

from agentmesh.bridge.server import uvicorn_options
from agentmesh.bridge.tlsreload import ReloadingContextFactory
from agentmesh.clock import FakeClock
from agentmesh.config import MeshConfig
from agentmesh.configfile import parse_config
from agentmesh.pki import CertificateAuthority, IssuedCert, write_identity, write_private

HERE = Path(__file__).parent


def pid_app() -> Starlette:
    """A stand-in for the bridge app (TLS is uvicorn's, not the app's): answers with its process id."""

    async def pid(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(os.getpid()))

    return Starlette(routes=[Route("/", pid)])


@dataclass
class Site:
    ca: CertificateAuthority
    config: MeshConfig
    issued: IssuedCert

    @property
    def dir(self) -> Path:
        return self.config.identity_dir("bridge")

    def renew(self) -> IssuedCert:
        """What renewal does on disk: key.pem first, then cert.pem replaced atomically."""
        issued = self.ca.renew("bridge", dns=["localhost"])
        write_identity(issued, self.dir)
        return issued

    def served(self, port: int) -> tuple[int, str]:
        """(serial of the certificate a fresh connection is shown, the app's answer over it)."""
        ctx = ssl.create_default_context(cafile=str(self.dir / "bundle.pem"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            reply = b"".join(iter(lambda: tls.recv(65536), b""))
        head, _, body = reply.decode().partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 200"), head
        return x509.load_der_x509_certificate(der).serial_number, body


@pytest.fixture
def site(tmp_path: Path) -> Site:
    ca = CertificateAuthority.init(tmp_path / "ca", TD)
    config = parse_config({"trust_domain": TD, "agents": {}}, tmp_path)
    issued = ca.issue("bridge", dns=["localhost"])
    write_identity(issued, config.identity_dir("bridge"))
    return Site(ca, config, issued)


def bridge_options(site: Site, factory: ReloadingContextFactory | None, **overrides: Any) -> dict[str, Any]:
    """The bridge's uvicorn options, with ``factory`` (a test clock) in place of the default one."""
    opts = uvicorn_options(site.config, listen="127.0.0.1:0")
    assert isinstance(opts.get("ssl_context_factory"), ReloadingContextFactory)  # the bridge reloads by default
    opts.pop("workers")
    if factory is None:
        del opts["ssl_context_factory"]  # uvicorn's own one-shot context from ssl_certfile/ssl_keyfile
    else:
        opts["ssl_context_factory"] = factory
    return {**opts, **overrides}


@contextlib.contextmanager
def serving(opts: dict[str, Any]) -> Iterator[tuple[uvicorn.Server, int]]:
    """uvicorn as ``serve()`` runs it (``Server.run``: its own event loop, ``opts["loop"]``), in a thread,
    on a socket bound to port 0 before it starts (connections wait in the backlog: no start-up polling;
    the first connection returns once the server has started, having read the certificate files)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(pid_app(), **opts))
    failed: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as e:  # surfaced below, not lost in the thread
            failed.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield server, sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
    assert not failed, failed


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_renewed_certificate_reaches_new_connections_without_restart(site: Site, loop: str) -> None:
    clock = FakeClock(0.0)
    factory = ReloadingContextFactory(check_every=1.0, clock=clock)
    with serving(bridge_options(site, factory, loop=loop)) as (server, port):
        assert site.served(port)[0] == site.issued.serial
        reloader = factory.reloader
        assert reloader is not None and server.config.ssl is reloader.context  # what uvicorn serves with
        renewed = site.renew()
        assert renewed.serial != site.issued.serial
        assert site.served(port)[0] == site.issued.serial  # the files are stat'ed at most once a second
        clock.advance(1.0)
        assert site.served(port)[0] == renewed.serial
        assert site.served(port)[0] == renewed.serial
        assert reloader.reloads == 1


def test_without_the_reloader_the_old_certificate_is_served_after_renewal(site: Site) -> None:
    """What the reloader fixes: uvicorn's own context keeps the certificate it read at start."""
    with serving(bridge_options(site, None)) as (_, port):
        assert site.served(port)[0] == site.issued.serial
        site.renew()
        for _ in range(3):
            assert site.served(port)[0] == site.issued.serial


def test_a_key_that_does_not_match_the_certificate_keeps_the_last_good_one(
        site: Site, caplog: pytest.LogCaptureFixture) -> None:
    factory = ReloadingContextFactory(check_every=0)  # stat on every connection
    with serving(bridge_options(site, factory)) as (_, port):
        assert site.served(port)[0] == site.issued.serial
        renewed = site.ca.renew("bridge", dns=["localhost"])
        with caplog.at_level(logging.WARNING, logger="agentmesh.bridge"):
            write_private(site.dir / "key.pem", renewed.key_pem)  # half-written: the new key, the old cert
            for _ in range(3):
                assert site.served(port)[0] == site.issued.serial
            warnings = [r for r in caplog.records if r.name == "agentmesh.bridge" and r.levelno == logging.WARNING]
            assert len(warnings) == 1, caplog.text  # once, not once per connection
            assert "do not load together" in warnings[0].getMessage()
            assert "PRIVATE KEY" not in caplog.text and renewed.key_pem.decode().splitlines()[1] not in caplog.text
            write_identity(renewed, site.dir)  # the certificate lands: the pair matches again
            assert site.served(port)[0] == renewed.serial
        assert factory.reloader is not None and factory.reloader.reloads == 1


def test_a_missing_file_keeps_the_last_good_certificate(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    factory = ReloadingContextFactory(check_every=0)
    with serving(bridge_options(site, factory)) as (_, port), \
            caplog.at_level(logging.WARNING, logger="agentmesh.bridge"):
        assert site.served(port)[0] == site.issued.serial  # started (it reads the pair at start)
        (site.dir / "key.pem").unlink()
        assert site.served(port)[0] == site.issued.serial
        assert site.served(port)[0] == site.issued.serial
        assert "cannot stat" in caplog.text and caplog.text.count("cannot stat") == 1
        renewed = site.renew()
        assert site.served(port)[0] == renewed.serial


def test_the_factory_pickles_to_workers_without_its_reloader(site: Site) -> None:
    factory = ReloadingContextFactory(check_every=0.5)
    with serving(bridge_options(site, factory)) as (_, port):
        site.served(port)
        assert factory.reloader is not None
        copy = pickle.loads(pickle.dumps(factory))  # uvicorn spawns workers with the pickled config
    assert copy.reloader is None and copy.check_every == 0.5


def _worker_serials(site: Site, port: int) -> set[int]:
    """The serials fresh connections were shown, until both workers have answered."""
    seen: dict[str, set[int]] = {}
    for _ in range(400):
        serial, pid = site.served(port)
        seen.setdefault(pid, set()).add(serial)
        if len(seen) == 2:
            break
    assert len(seen) == 2, f"one worker answered 400 connections: {seen}"
    return set().union(*seen.values())


WORKERS = """
import sys, uvicorn
from agentmesh.bridge.server import uvicorn_options
from agentmesh.bridge.tlsreload import ReloadingContextFactory
from agentmesh.configfile import load_config
opts = uvicorn_options(load_config(sys.argv[1]), listen=sys.argv[2], workers=2)
assert isinstance(opts["ssl_context_factory"], ReloadingContextFactory)
opts["ssl_context_factory"] = ReloadingContextFactory(check_every=0)  # every connection: no clock to advance
uvicorn.run("test_bridge_tls_reload:pid_app", factory=True, **opts)
"""


def test_every_worker_reloads_the_renewed_certificate(site: Site, tmp_path: Path) -> None:
    """``workers=2``: uvicorn's real worker processes, each with its own reloader."""
    path = tmp_path / "mesh.yaml"
    path.write_text(f"trust_domain: {TD}\nagents: {{}}\n")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), *sys.path])}
    proc = subprocess.Popen([sys.executable, "-c", WORKERS, str(path), f"127.0.0.1:{port}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):  # refused until the supervisor has bound the port (waiting for start-up)
            try:
                site.served(port)
                break
            except ConnectionRefusedError:
                assert proc.poll() is None, proc.communicate()[0].decode()
                time.sleep(0.05)
        assert _worker_serials(site, port) == {site.issued.serial}  # both workers up, on the first cert
        renewed = site.renew()
        assert _worker_serials(site, port) == {renewed.serial}  # each worker reloaded it
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=20)[0].decode(errors="replace")
    assert "PRIVATE KEY" not in out
