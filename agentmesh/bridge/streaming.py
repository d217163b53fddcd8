"""Server-streaming gRPC calls as NDJSON or Server-Sent Events.

The response starts once the first message (or the end of the stream) is in, or after
``first_wait`` seconds, so a call refused before its first message still gets a real HTTP error
status. After that a failure ends the stream with an error record (``{"error": {...}}`` in NDJSON,
``event: error`` in SSE). SSE sends ``: keep-alive`` comments while the agent is quiet. A client
that disconnects cancels the gRPC call: the agent's handler sees the cancellation.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from agentmesh.bridge.errors import HttpError, from_call_error
from agentmesh.errors import MeshError

__all__ = ["NDJSON", "SSE", "GrpcStreamResponse", "StreamFormat", "disconnected", "first_message", "stream_format"]


@dataclass(frozen=True, slots=True)
class StreamFormat:
    media_type: str
    keepalive: bool

    def message(self, body: bytes) -> bytes:
        return b"data: " + body + b"\n\n" if self is SSE else body + b"\n"

    def error(self, body: dict[str, Any]) -> bytes:
        """The bridge's own error record: ``event: error`` with the body, or ``{"error": body}``."""
        return self.error_record(body if self is SSE else {"error": body})

    def error_record(self, record: dict[str, Any]) -> bytes:
        """An error record exactly as given (``event: error`` in SSE, a line in NDJSON)."""
        data = json.dumps(record).encode()
        return b"event: error\ndata: " + data + b"\n\n" if self is SSE else data + b"\n"


NDJSON = StreamFormat("application/x-ndjson", keepalive=False)
SSE = StreamFormat("text/event-stream", keepalive=True)
KEEPALIVE = b": keep-alive\n\n"


def stream_format(accept: str | None) -> StreamFormat:
    """SSE when the client accepts ``text/event-stream``, else NDJSON."""
    types = {part.split(";")[0].strip().lower() for part in (accept or "").split(",")}
    return SSE if "text/event-stream" in types else NDJSON


async def first_message(call: Any, wait: float) -> asyncio.Future[Any]:
    """Starts reading ``call``; raises the call's error if it fails within ``wait`` seconds."""
    first: asyncio.Future[Any] = asyncio.ensure_future(call.read())
    done, _ = await asyncio.wait({first}, timeout=wait)
    exc = first.exception() if done else None
    if exc is not None:
        raise exc
    return first


class GrpcStreamResponse(Response):
    """An ASGI response that relays a unary-stream call (``first`` is its pending first read)."""

    def __init__(self, call: Any, first: asyncio.Future[Any], fmt: StreamFormat, encode: Callable[[Message], bytes],
                 *, agent: str, timeout: float, keepalive: float, headers: dict[str, str] | None = None,
                 error: Callable[[HttpError], bytes] | None = None) -> None:
        """``error`` renders a failure after the first message (default: :meth:`StreamFormat.error`)."""
        self.call, self.first, self.fmt, self.encode = call, first, fmt, encode
        self.render_error = error or (lambda e: fmt.error(e.body()))
        self.agent, self.timeout, self.keepalive = agent, timeout, keepalive
        self.status_code = 200
        self.media_type = fmt.media_type
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(disconnected(receive))
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.call.cancel()  # no-op once the call has ended; else the agent sees CANCELLED
            for task in (pump, watch, self.first):
                task.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)
        if pump.done() and not pump.cancelled() and pump.exception() is not None:
            exc = pump.exception()
            if not isinstance(exc, OSError):  # a client gone while we wrote is not an error
                raise exc  # type: ignore[misc]

    async def _pump(self, send: Send) -> None:
        pending = self.first
        wait = self.keepalive if self.fmt.keepalive else None
        while True:
            done, _ = await asyncio.wait({pending}, timeout=wait)
            if not done:
                await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
                continue
            try:
                message = pending.result()
            except (grpc.aio.AioRpcError, MeshError) as e:
                error = from_call_error(e, self.agent, self.timeout)
                assert error is not None
                await send({"type": "http.response.body", "body": self.render_error(error), "more_body": True})
                break
            if message is grpc.aio.EOF:
                break
            await send({"type": "http.response.body", "body": self.fmt.message(self.encode(message)),
                        "more_body": True})
            pending = asyncio.ensure_future(self.call.read())
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def disconnected(receive: Receive) -> None:
    """Returns when the client goes away (call it once the request body has been read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
