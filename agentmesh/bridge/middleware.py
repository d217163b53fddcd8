"""ASGI middleware at the edge: the HTTP server span, the access log, the request id, strict CORS.

Every response carries ``x-request-id`` and the ``traceparent`` of the bridge's server span (W3C trace
context: its trace id is the one ``agentmesh audit show --trace ID`` finds), whatever the answer.

The access log (logger ``agentmesh.bridge.access``) has one line per request: method, raw path
(never the query string), status, duration, principal, trace id, request id. Nothing from the
``Authorization`` header (or any other header) is ever logged or put on the span.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, format_trace_id
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentmesh.audit import attributes as A
from agentmesh.audit import extract, inject
from agentmesh.audit.redact import redact_text
from agentmesh.bridge.edge import path_segments, request_id
from agentmesh.bridge.errors import HttpError
from agentmesh.metadata import TRACE_HEADERS

__all__ = ["AGENT_PREFIX", "EdgeMiddleware", "StrictCORSMiddleware", "access_log"]

access_log = logging.getLogger("agentmesh.bridge.access")
AGENT_PREFIX = b"/v1/agents/"
_MAX_LOGGED_PATH = 256
_UNPRINTABLE = re.compile(rb"[^\x21-\x7e]")


class EdgeMiddleware:
    """Outermost layer: continues the caller's trace with a server span and logs the request.

    ``tracer`` is a callable so the span goes to the bridge node's audit sink once it is started.
    Encoded separators are refused here for every path except the agent routes, which refuse them
    after authentication (an unauthenticated caller always gets 401 there).
    """

    def __init__(self, app: ASGIApp, tracer: Callable[[], trace.Tracer], agent: str) -> None:
        self.app = app
        self.tracer = tracer
        self.agent = agent

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
        span = self.tracer().start_span(f"HTTP {method}", context=context, kind=SpanKind.SERVER, attributes={
            "http.request.method": method, "url.path": path, A.AGENT: self.agent})
        status = 500
        answer = [(b"x-request-id", rid.encode()), *_trace_headers(span)]

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *answer]
            await send(message)

        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                if not raw_path.startswith(AGENT_PREFIX):
                    try:
                        path_segments(raw_path)
                    except HttpError as e:
                        await e.response()(scope, receive, send_wrapper)
                        return
                await self.app(scope, receive, send_wrapper)
        finally:
            principal = state.get("principal")
            route = state.get("route")
            span.set_attribute("http.response.status_code", status)
            if route:
                span.update_name(f"{method} {route}")
            if principal:
                span.set_attribute(A.ENDUSER_ID, principal)
            txn = state.get("txn")
            if txn:
                span.set_attribute(A.TXN, txn)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
            span.end()
            access_log.info("%s %s %d %.1fms principal=%s trace=%s request_id=%s", method, redact_text(path),
                            status, (time.perf_counter() - start) * 1000, principal or "-",
                            format_trace_id(span.get_span_context().trace_id), rid)


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


def _trace_headers(span: trace.Span) -> list[tuple[bytes, bytes]]:
    """The ``traceparent`` of ``span`` as a response header (none for a span that is not recorded)."""
    carrier: list[tuple[str, str]] = []
    inject(carrier, trace.set_span_in_context(span))
    return [(k.encode(), v.encode()) for k, v in carrier if k == "traceparent"]


def _printable(raw: bytes) -> str:
    """A raw path safe for a log line: no control characters or spaces, bounded length."""
    cut = raw[:_MAX_LOGGED_PATH]
    text = _UNPRINTABLE.sub(lambda m: f"\\x{m.group()[0]:02x}".encode(), cut).decode("ascii")
    return text + ("..." if len(raw) > _MAX_LOGGED_PATH else "")
