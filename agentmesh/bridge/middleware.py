"""ASGI middleware at the edge: the HTTP server span, the access log, the request id, strict CORS.

Every response carries ``x-request-id`` and the ``traceparent`` of the bridge's server span (W3C trace
context: its trace id is the one ``agentmesh audit show --trace ID`` finds), whatever the answer; but
a probe (``quiet`` paths: ``/healthz`` and ``/readyz`` unless ``audit.trace_housekeeping``) that
succeeds has no span at all, and one that fails (status 400 or more) a span but no ``traceparent``.

The span follows the OpenTelemetry conventions for HTTP server spans (v1.44, docs/http/http-spans.md):
named "{http.request.method} {http.route}" ("POST /v1/agents/ingestor/agentmesh.v1.Agent/Invoke"; the
method alone when no route matched), where ``http.route`` is the template of the route that matched
(the catalog's, as openapi.json lists it, or the Starlette route's), never the raw path; with
``url.scheme``, ``url.path`` (printable, bounded; never the query string, which may carry request
fields), ``server.address``/``server.port`` (from a well-formed ``Host``), ``client.address`` and
``network.peer.*``, ``http.response.status_code``; status ERROR and ``error.type`` for 5xx only.
``agentmesh.request_id`` is the request id the response carries (and every agent's span of the request).

The access log (logger ``agentmesh.bridge.access``) has one line per request: method, raw path
(never the query string), status, duration, principal, trace id, request id. Nothing from the
``Authorization`` header (or any other header but ``Host``, checked) is ever logged or put on the span.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode, format_trace_id
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentmesh.audit import attributes as A
from agentmesh.audit import extract
from agentmesh.audit.propagation import inject_span
from agentmesh.audit.redact import redact_text
from agentmesh.bridge.edge import path_segments, request_id
from agentmesh.bridge.errors import HttpError
from agentmesh.metadata import TRACE_HEADERS

__all__ = ["AGENT_PREFIX", "PROBES", "EdgeMiddleware", "StrictCORSMiddleware", "access_log"]

access_log = logging.getLogger("agentmesh.bridge.access")
AGENT_PREFIX = b"/v1/agents/"
#: the probes' paths: their successes are not traced unless ``audit.trace_housekeeping``
PROBES = ("/healthz", "/readyz")
_MAX_LOGGED_PATH = 256
_UNPRINTABLE = re.compile(rb"[^\x21-\x7e]")
#: http.request.method values (RFC 9110, PATCH, QUERY); any other verb is recorded as _OTHER
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
                            "QUERY"})
#: a well-formed Host: a DNS name or IPv4 address, or an [IPv6] one, and an optional port
_HOST = re.compile(r"(?:\[([0-9A-Fa-f:.]{2,45})\]|([A-Za-z0-9][A-Za-z0-9.-]{0,252}))(?::([0-9]{1,5}))?")
_DEFAULT_PORTS = {"https": 443, "http": 80}


class EdgeMiddleware:
    """Outermost layer: continues the caller's trace with a server span and logs the request.

    ``tracer`` is a callable so the span goes to the bridge node's audit sink once it is started.
    Encoded separators are refused here for every path except the agent routes, which refuse them
    after authentication (an unauthenticated caller always gets 401 there). ``quiet``: paths (probes)
    traced only when their answer is 400 or more.
    """

    def __init__(self, app: ASGIApp, tracer: Callable[[], trace.Tracer], agent: str,
                 quiet: Collection[str] = ()) -> None:
        self.app = app
        self.tracer = tracer
        self.agent = agent
        self.quiet = frozenset(p.encode() for p in quiet)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        headers = Headers(scope=scope)
        rid = request_id(headers.get("x-request-id"))
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        method = scope["method"]
        context = extract([(k, v) for k, v in headers.items() if k in TRACE_HEADERS])
        path = _printable(raw_path)
        verb = method if method in _KNOWN_METHODS else A.OTHER  # (another verb is the caller's choice)
        attributes = {A.HTTP_REQUEST_METHOD: verb, A.URL_SCHEME: scope.get("scheme", "http"), A.URL_PATH: path,
                      **_server(headers.get("host"), scope.get("scheme", "http")), **_client(scope.get("client")),
                      A.AGENT: self.agent, A.REQUEST_ID: rid}
        started = time.time_ns()
        span = None if raw_path in self.quiet else \
            self.tracer().start_span(_name(verb), context=context, kind=SpanKind.SERVER, attributes=attributes)
        status = 500
        error: str | None = None
        answer = [(b"x-request-id", rid.encode()), *(_trace_headers(span) if span is not None else ())]

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *answer]
            await send(message)

        # the span current while the request is served (as trace.use_span makes it, without its context manager)
        current = otel_context.attach(trace.set_span_in_context(span if span is not None else trace.INVALID_SPAN))
        try:
            if not raw_path.startswith(AGENT_PREFIX):
                try:
                    path_segments(raw_path)
                except HttpError as e:
                    await e.response()(scope, receive, send_wrapper)
                    return
            await self.app(scope, receive, send_wrapper)
        except Exception as e:  # (nothing answered: the outer error handler answers 500)
            error = f"{type(e).__module__}.{type(e).__qualname__}"
            raise
        finally:
            otel_context.detach(current)
            principal = state.get("principal")
            if span is None and status >= 400:  # a probe that failed: traced after all
                span = self.tracer().start_span(_name(verb), context=context, kind=SpanKind.SERVER,
                                                attributes=attributes, start_time=started)
            if span is not None:
                outcome = _outcome(scope, state, status, error)
                span.set_attributes(outcome)
                route = outcome.get(A.HTTP_ROUTE)
                if route:
                    span.update_name(_name(verb, route))
                if A.ERROR_TYPE in outcome:  # an HTTP server span: an error only for 5xx (or nothing sent)
                    span.set_status(StatusCode.ERROR)
                span.end()
            if access_log.isEnabledFor(logging.INFO):  # (its arguments cost a few us: only when it is written)
                access_log.info("%s %s %d %.1fms principal=%s trace=%s request_id=%s", method, redact_text(path),
                                status, (time.perf_counter() - start) * 1000, principal or "-",
                                format_trace_id(span.get_span_context().trace_id) if span is not None else "-",
                                rid)


class StrictCORSMiddleware(CORSMiddleware):
    """Starlette's CORS with explicit origins, whose refused preflights carry no CORS headers at all
    (Starlette's own 400 still lists the allowed methods and headers)."""

    def __init__(self, app: ASGIApp, allow_origins: Sequence[str]) -> None:
        super().__init__(
            app,
            allow_origins=list(allow_origins),
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["authorization", "content-type", "accept", "x-request-id", "x-request-timeout",
                           "grpc-timeout", *sorted(TRACE_HEADERS)],
            expose_headers=["retry-after", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset",
                            "www-authenticate", "x-request-id", "traceparent"],
            allow_credentials=False,  # bearer tokens in a header, never cookies: no credentialed CORS
            max_age=600,
        )

    async def simple_response(self, scope: Scope, receive: Receive, send: Send, request_headers: Headers) -> None:
        origin = request_headers.get("origin")
        if origin is None or self.is_allowed_origin(origin):
            await super().simple_response(scope, receive, send, request_headers)
            return

        async def vary(message: Message) -> None:  # another origin: no CORS header at all
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"vary", b"Origin")]
            await send(message)

        await self.app(scope, receive, vary)

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 200:
            return response
        status = 403 if not self.is_allowed_origin(request_headers["origin"]) else 400
        return PlainTextResponse("CORS preflight refused", status_code=status, headers={"Vary": "Origin"})


def _name(verb: str, route: str | None = None) -> str:
    """The span name: "{method} {route}", the method alone without a route, "HTTP" for _OTHER."""
    if verb == A.OTHER:
        return "HTTP"
    return f"{verb} {route}" if route else verb


def _outcome(scope: Scope, state: dict[str, Any], status: int, error: str | None) -> dict[str, Any]:
    """The attributes known once the request was answered: route, status, and who and what it was for."""
    attrs: dict[str, Any] = {A.HTTP_RESPONSE_STATUS_CODE: status}
    route = state.get("http_route")  # the gateway's (catalog) route; else the Starlette route that matched
    if route is None and isinstance(scope.get("route"), Route):
        route = scope["route"].path
    if route:
        attrs[A.HTTP_ROUTE] = route
    for key, attribute in (("principal", A.ENDUSER_ID), ("txn", A.TXN), ("target", A.TARGET)):
        value = state.get(key)
        if value:
            attrs[attribute] = value
    if status >= 500 or error is not None:
        attrs[A.ERROR_TYPE] = error or str(status)
    return attrs


def _server(host: str | None, scheme: str) -> dict[str, Any]:
    """``server.address`` and ``server.port`` of a well-formed ``Host`` (none of another)."""
    m = _HOST.fullmatch(host) if host else None
    if m is None:
        return {}
    port = int(m.group(3)) if m.group(3) else _DEFAULT_PORTS.get(scheme)
    out: dict[str, Any] = {A.SERVER_ADDRESS: (m.group(1) or m.group(2)).lower()}
    if port is not None and 0 < port < 65536:
        out[A.SERVER_PORT] = port
    return out


def _client(client: Any) -> dict[str, Any]:
    """``client.address`` and ``network.peer.*`` of the connection (no proxy header is trusted)."""
    if not client:
        return {}
    host, port = client[0], client[1]
    return {A.CLIENT_ADDRESS: host, A.NETWORK_PEER_ADDRESS: host, A.NETWORK_PEER_PORT: port}


def _trace_headers(span: trace.Span) -> list[tuple[bytes, bytes]]:
    """The ``traceparent`` of ``span`` as a response header (none for a span that is not recorded)."""
    carrier: list[tuple[str, str]] = []
    inject_span(carrier, span)
    return [(k.encode(), v.encode()) for k, v in carrier if k == "traceparent"]


def _printable(raw: bytes) -> str:
    """A raw path safe for a log line: no control characters or spaces, bounded length."""
    cut = raw[:_MAX_LOGGED_PATH]
    text = _UNPRINTABLE.sub(lambda m: f"\\x{m.group()[0]:02x}".encode(), cut).decode("ascii")
    return text + ("..." if len(raw) > _MAX_LOGGED_PATH else "")
