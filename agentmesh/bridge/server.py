"""Serving the bridge with uvicorn: HTTPS by default, uvloop + httptools when installed.

Every phase of a connection (TLS handshake, idle, request head, body) has a deadline and the
connections are capped in all and per client address (:mod:`agentmesh.bridge.protocol`, below the app).

The HTTPS certificate is ``bridge.tls_cert``/``bridge.tls_key`` when configured, else the bridge's
mesh identity (``cert.pem``/``key.pem``); a renewed pair reaches new connections without a restart,
in every worker (:mod:`agentmesh.bridge.tlsreload`). Plain HTTP needs ``insecure_http``
(``--insecure-http``) or ``bridge.tls: false`` in the config file. uvicorn's access log is off (the
bridge writes its own without secrets) and its log level is never below INFO: at TRACE it would log
request headers. With ``workers > 1`` uvicorn imports :func:`app_from_env`, which reads the config
path from ``AGENTMESH_BRIDGE_CONFIG``.

Stopping (SIGTERM/SIGINT): uvicorn stops accepting connections and lets the requests in flight finish
for ``grace_period``; any still running then is cancelled, and :class:`AnswerAtGraceEnd` answers it as
the bridge answers everything, in JSON: 503 UNAVAILABLE with ``Retry-After`` (uvicorn alone would send
a plain-text 500), its call to the agent cancelled with it. Idle keep-alive connections are dropped at
once (:class:`DrainingServer`): a TLS close would wait for a client that is not reading to answer it,
and hold the stop for the whole grace period (one worker; with ``workers > 1`` uvicorn's own loop runs).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import grpc
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentmesh.bridge.app import create_app
from agentmesh.bridge.errors import MESH_RETRY_AFTER, error_body
from agentmesh.bridge.protocol import BridgeHttp, BridgeLoop, ConnectionLimits
from agentmesh.bridge.tlsreload import ReloadingContextFactory, uvicorn_reloads
from agentmesh.config import MeshConfig
from agentmesh.configfile import load_config
from agentmesh.errors import ConfigError, PKIError
from agentmesh.runtime.credentials import AgentIdentity

__all__ = ["CONFIG_ENV", "AnswerAtGraceEnd", "DrainingServer", "app_from_env", "serve", "split_listen",
           "uvicorn_options"]

CONFIG_ENV = "AGENTMESH_BRIDGE_CONFIG"
log = logging.getLogger("agentmesh.bridge")


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen: expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def _tls_files(config: MeshConfig) -> tuple[Path, Path]:
    b = config.bridge
    if (b.tls_cert is None) != (b.tls_key is None):
        raise ConfigError("bridge.tls_cert and bridge.tls_key must be set together")
    if b.tls_cert is not None and b.tls_key is not None:
        cert, key = b.tls_cert, b.tls_key
    else:
        directory = config.identity_dir(b.name)
        cert, key = directory / "cert.pem", directory / "key.pem"
    for path in (cert, key):
        if not path.is_file():
            raise PKIError(f"bridge HTTPS: {path} not found (issue the bridge identity, set bridge.tls_cert/"
                           "tls_key, or pass --insecure-http)")
    return cert, key


def uvicorn_options(config: MeshConfig, *, listen: str | None = None, insecure_http: bool = False,
                    workers: int = 1) -> dict[str, Any]:
    """The uvicorn settings for this config (no I/O beyond checking that the TLS files exist)."""
    if workers < 1:
        raise ConfigError(f"--workers: expected a number >= 1, got {workers}")
    b = config.bridge
    host, port = split_listen(listen or b.listen)
    parser = "h11" if b.http_parser == "h11" or not importlib.util.find_spec("httptools") else "httptools"
    limits = ConnectionLimits(head_timeout=b.head_timeout, max_head=b.max_head, body_timeout=b.body_timeout,
                              idle_timeout=b.idle_timeout, max_connections=b.max_connections,
                              max_pending_per_ip=b.max_pending_per_ip)
    opts: dict[str, Any] = {
        "host": host, "port": port, "workers": workers, "access_log": False, "log_level": "info",
        "lifespan": "on", "proxy_headers": False, "server_header": False,
        "timeout_graceful_shutdown": config.grace_period,  # requests in flight finish; see AnswerAtGraceEnd
        # every phase of a connection is bounded there (uvicorn's limit_concurrency is not used: it counts
        # the idle and half-sent connections it never closes, and answers 503 only after reading a head)
        "http": BridgeHttp(limits, parser),  # type: ignore[arg-type]
        "h11_max_incomplete_event_size": b.max_head,
        "timeout_keep_alive": b.idle_timeout,
        "loop": BridgeLoop(b.handshake_timeout, uvloop=importlib.util.find_spec("uvloop") is not None),
    }
    if not insecure_http and config.bridge.tls:
        cert, key = _tls_files(config)
        opts.update(ssl_certfile=str(cert), ssl_keyfile=str(key))
        if uvicorn_reloads():
            opts["ssl_context_factory"] = ReloadingContextFactory()
    return opts


def serve(config: MeshConfig, *, listen: str | None = None, insecure_http: bool = False, workers: int = 1) -> None:
    """Runs the bridge until interrupted (blocking)."""
    opts = uvicorn_options(config, listen=listen, insecure_http=insecure_http, workers=workers)
    AgentIdentity(config.identity_dir(config.bridge.name), config.trust_domain)  # fail early and in one line
    if "ssl_certfile" not in opts:
        log.warning("the bridge serves plain HTTP on %s:%s: bearer tokens cross the network in clear text",
                    opts["host"], opts["port"])
    elif "ssl_context_factory" not in opts:
        log.warning("uvicorn < 0.47 reads the HTTPS certificate once: restart the bridge after renewing it")
    if workers == 1:
        server = DrainingServer(uvicorn.Config(AnswerAtGraceEnd(create_app(config)), **opts))
        try:
            server.run()
        except KeyboardInterrupt:
            pass
        if not server.started:
            sys.exit(3)  # as uvicorn.run does (its STARTUP_FAILURE); the reason is in the log above
        return
    if config.source is None:
        raise ConfigError("--workers > 1 needs a config file (each worker loads it)")
    os.environ[CONFIG_ENV] = str(Path(config.source).resolve())
    uvicorn.run("agentmesh.bridge.server:app_from_env", factory=True, **opts)


def app_from_env() -> ASGIApp:
    """The app of one uvicorn worker process (``workers > 1``)."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError(f"{CONFIG_ENV} is not set")
    return AnswerAtGraceEnd(create_app(load_config(path)))


class DrainingServer(uvicorn.Server):
    """uvicorn's server, but a stop drops the connections that have no request in flight at once."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for connection in list(self.server_state.connections):
            cycle, transport = getattr(connection, "cycle", None), getattr(connection, "transport", None)
            if transport is not None and (cycle is None or cycle.response_complete):
                transport.abort()
        await super().shutdown(sockets)


_STOPPING = json.dumps(error_body(grpc.StatusCode.UNAVAILABLE, "the bridge is shutting down: the request did "
                                  "not finish within its grace period; retry")).encode()


class AnswerAtGraceEnd:
    """Outermost ASGI wrapper: a request whose task is cancelled before its response started (uvicorn
    does that to the requests still running when the grace period ends) is answered 503 UNAVAILABLE in
    the bridge's JSON error shape, with ``Retry-After``; one already streaming its response just ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if started or task is None:
                raise
            task.uncancel()  # answered here: the rest of this request is this answer
            log.warning("a request was still running at the end of the grace period: answered 503")
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(_STOPPING)).encode()),
                (b"retry-after", str(MESH_RETRY_AFTER).encode()), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": _STOPPING})
