"""The bridge as a Starlette app: routes, middleware order and lifespan in one place.

::

    EdgeMiddleware         server span (continues traceparent; none for a probe that succeeds unless
                           audit.trace_housekeeping), access log, request id, path guard
    StrictCORSMiddleware   explicit origins only; refused preflights get no CORS headers
    routes                 /healthz /readyz /openapi.json /docs /static  GET /v1/agents
                           /.well-known/{agent-card,jwks}.json  GET /v1/agents/*/.well-known/agent-card.json
                           /v1/agents/** -> Gateway (auth, route, transcode, call as the caller)
                           POST /v1/agents/{a2a agent} -> JsonRpc (A2A's JSON-RPC binding, same call path)
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from opentelemetry import trace
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from agentmesh import __version__
from agentmesh.bridge.cards import card_routes
from agentmesh.bridge.errors import HttpError
from agentmesh.bridge.gateway import Gateway
from agentmesh.bridge.health import Readiness
from agentmesh.bridge.jsonrpc import JsonRpc
from agentmesh.bridge.middleware import PROBES, EdgeMiddleware, StrictCORSMiddleware
from agentmesh.bridge.openapi import openapi_document
from agentmesh.bridge.routes import Catalog
from agentmesh.config import MeshConfig
from agentmesh.runtime.gcfreeze import freeze_after_startup
from agentmesh.runtime.node import MeshNode

__all__ = ["create_app"]

STATIC_DIR = Path(__file__).parent / "static"
_DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
             "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_HTTP_CODES = {404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED,
               400: grpc.StatusCode.INVALID_ARGUMENT}


def create_app(config: MeshConfig, *, node: MeshNode | None = None) -> Starlette:
    """The bridge app. Without ``node`` it starts (and stops) its own bridge MeshNode in its lifespan."""
    catalog = Catalog.from_config(config)
    gateway = Gateway(config, catalog)
    openapi = json.dumps(openapi_document(catalog, title=f"agentmesh bridge ({config.trust_domain})",
                                          version=__version__)).encode()
    readiness: list[Readiness] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # uvicorn's access line would carry query strings; ours (EdgeMiddleware) is the only one
        logging.getLogger("uvicorn.access").disabled = True
        own = node if node is not None else MeshNode(config, config.bridge.name)
        if node is None:
            await own.start()
            freeze_after_startup()  # a bridge process of its own: its start-up objects out of the collector's way
        gateway.attach(own)
        readiness.append(Readiness(config, own.identity, catalog.agents))
        try:
            yield
        finally:
            gateway.detach()
            await readiness.pop().close()
            if node is None:
                await own.close()

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if not readiness:
            return _json({"status": "unready", "unready": list(catalog.agents)}, 503)
        down = await readiness[0].unready()
        return _json({"status": "unready", "unready": down}, 503) if down else _json({"status": "ready"})

    async def openapi_json(request: Request) -> Response:
        return Response(openapi, media_type="application/json")

    async def docs(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "docs.html", headers={"Content-Security-Policy": _DOCS_CSP})

    async def agents(scope: Scope, receive: Receive, send: Send) -> None:
        response = await gateway.handle(Request(scope, receive))
        await response(scope, receive, send)

    def tracer() -> trace.Tracer:
        return gateway.node.sink.tracer if gateway.started else trace.NoOpTracer()

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/openapi.json", openapi_json, methods=["GET"]),
            Route("/docs", docs, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
            *card_routes(config, lambda: gateway.node),  # A2A discovery: before the /v1/agents mount
            Route("/v1/agents", gateway.list_agents, methods=["GET"]),
            Route("/v1/agents/{agent}", JsonRpc(gateway).handle, methods=["POST"]),  # A2A's JSON-RPC binding
            Mount("/v1/agents", agents),
        ],
        middleware=[
            Middleware(EdgeMiddleware, tracer=tracer, agent=config.bridge.name,
                       quiet=() if config.audit.trace_housekeeping else PROBES),  # probes: traced when failed
            Middleware(StrictCORSMiddleware, allow_origins=config.bridge.cors_origins),
        ],
        exception_handlers={HTTPException: _http_exception, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app


def _json(doc: object, status: int = 200) -> Response:
    return Response(json.dumps(doc).encode(), status_code=status, media_type="application/json")


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, grpc.StatusCode.INVALID_ARGUMENT)
    message = "no such route" if exc.status_code == 404 else str(exc.detail)
    return HttpError(code, message, status=exc.status_code).response(dict(exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> Response:
    return HttpError(grpc.StatusCode.INTERNAL, "internal error").response()
