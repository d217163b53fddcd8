"""One HTTP request to one gRPC call: authenticate, route, transcode, call as the caller, answer.

The caller's token is verified here, then exchanged at the control plane (the mesh's Transaction
Token Service) for a transaction token: the caller's own token goes no further than the bridge. The
call goes through the bridge node's client chain (its own bound token, the transaction token and its
first hop link, traceparent, deadline) inside :func:`delegating`; the agent's policy decides. Only
:data:`agentmesh.bridge.edge.FORWARDED_HEADERS` reach the agent as metadata, and only A2A's service
parameters come back as response headers.

Two bindings share :meth:`Gateway.call`: the REST routes here (the default route and every
``google.api.http`` rule), and A2A's JSON-RPC binding (:mod:`agentmesh.bridge.jsonrpc`). Errors of A2A
operations take A2A's shapes (:mod:`agentmesh.bridge.a2a_errors`); every other route keeps the bridge's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive

from agentmesh.a2a.sdk import A2A_SERVICE
from agentmesh.bridge.a2a_errors import rest_body
from agentmesh.bridge.edge import (
    WWW_AUTH_INVALID,
    authenticate,
    forwarded_metadata,
    parse_timeout,
    path_segments,
    returned_headers,
)
from agentmesh.bridge.errors import HttpError, from_call_error
from agentmesh.bridge.routes import Catalog, Match, Operation
from agentmesh.bridge.streaming import GrpcStreamResponse, StreamFormat, disconnected, first_message, stream_format
from agentmesh.bridge.transactions import Transactions
from agentmesh.bridge.transcode import EMPTY, build_request, parse_json, to_json
from agentmesh.config import MeshConfig
from agentmesh.errors import MeshError, TokenError
from agentmesh.interceptors.auth import principal_of
from agentmesh.interceptors.client import delegating
from agentmesh.policy import PolicyRequest
from agentmesh.runtime.channel import StubChannel
from agentmesh.runtime.node import MeshNode
from agentmesh.tokens import VerifiedToken
from agentmesh.tokens.txn import scope_of

__all__ = ["Gateway", "Reply", "Settings", "is_a2a"]

A2A_SUBSCRIBE = f"/{A2A_SERVICE}/SubscribeToTask"

_READY = grpc.ChannelConnectivity.READY
_SETTLED = frozenset({_READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN})


def is_a2a(op: Operation) -> bool:
    """Whether ``op`` is a method of A2A (``lf.a2a.v1.A2AService``): its errors take A2A's shapes."""
    return op.info.service == A2A_SERVICE


@dataclass(frozen=True, slots=True)
class Reply:
    """An agent's answer: one ``message``, or a ``stream`` whose ``first`` read is under way; with the
    response headers the agent sent back (:func:`agentmesh.bridge.edge.returned_headers`)."""

    op: Operation
    timeout: float
    headers: dict[str, str]
    message: Message | None = None
    stream: Any = None
    first: asyncio.Future[Any] | None = None


@dataclass(slots=True)
class Settings:
    """Tunables of the call path (seconds)."""

    keepalive: float = 15.0  # SSE comment interval on quiet streams
    first_wait: float = 1.0  # how long a stream may take to its first message before headers are sent
    connect_timeout: float = 2.0  # bound on dialing an agent whose channel is not connected yet


class Gateway:
    def __init__(self, config: MeshConfig, catalog: Catalog, settings: Settings | None = None) -> None:
        self.config = config
        self.catalog = catalog
        self.settings = settings or Settings()
        self._node: MeshNode | None = None
        self._callables: dict[tuple[str, str], tuple[StubChannel, Callable[..., Any]]] = {}
        self._transactions = Transactions(
            lambda token, route, context: self.node.exchange(token, route=route, request_context=context),
            reuse=config.bridge.txn_reuse)

    # ------------------------------------------------------------------ lifecycle
    @property
    def node(self) -> MeshNode:
        if self._node is None:
            raise HttpError(grpc.StatusCode.UNAVAILABLE, "the bridge is starting")
        return self._node

    @property
    def started(self) -> bool:
        return self._node is not None

    def attach(self, node: MeshNode) -> None:
        self._node = node
        self._callables.clear()

    def detach(self) -> None:
        self._node = None
        self._callables.clear()
        self._transactions.clear()

    # ------------------------------------------------------------------ the agent routes (REST)
    async def handle(self, request: Request) -> Response:
        try:
            return await self._handle(request)
        except HttpError as e:
            if self._a2a_path(request):
                return _json(rest_body(e), e.status, e.headers)
            return e.response()

    async def _handle(self, request: Request) -> Response:
        _, raw_token = self.authenticate(request)
        match = self._match(request)
        op = match.op
        request.state.http_route = op.route(match.rule)  # the span's http.route: a template, never the path
        timeout = self.timeout(request)
        body = await self._body(request, match)
        query = request.query_params.multi_items() if request.scope.get("query_string") else ()
        message = build_request(op.info.input(), match.rule, body, match.params, query)
        reply = await self.call(request, raw_token, op, message, timeout)
        encode = _encoder(match)
        if reply.message is not None:
            return Response(encode(reply.message), headers=reply.headers, media_type="application/json")
        fmt = stream_format(request.headers.get("accept"))
        error = (lambda e: fmt.error_record(rest_body(e))) if is_a2a(op) else None
        return self.stream_response(reply, fmt, encode, error)

    def _match(self, request: Request) -> Match:
        raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
        segments = path_segments(raw_path)
        return self._a2a_subscribe(request.method, segments) or self.catalog.match(request.method, segments)

    def _a2a_subscribe(self, verb: str, segments: list[str]) -> Match | None:
        """A2A's ``POST /tasks/{id}:subscribe``: the a2a-sdk's REST client subscribes with POST (its server
        takes GET and POST) while the proto's rule says GET; both are served."""
        if verb != "POST" or len(segments) < 4 or not segments[-1].endswith(":subscribe"):
            return None
        for op in self.catalog.operations(segments[2]):
            if op.method == A2A_SUBSCRIBE:
                for rule in op.rules:
                    params = rule.template.match(segments[3:])
                    if params is not None:
                        return Match(op, rule, params)
        return None

    def _a2a_path(self, request: Request) -> bool:
        """Whether a request's path names an A2A operation (its errors then take A2A's shape)."""
        try:
            return is_a2a(self._match(request).op)
        except HttpError:
            return False

    # ------------------------------------------------------------------ the one call path of both bindings
    def timeout(self, request: Request) -> float:
        b = self.config.bridge
        return parse_timeout(request.headers.get("grpc-timeout"), request.headers.get("x-request-timeout"),
                             default=b.default_timeout, maximum=b.max_timeout)

    async def call(self, request: Request, raw_token: str, op: Operation, message: Message,
                   timeout: float) -> Reply:
        """Calls ``op`` with ``message`` as the caller of ``raw_token`` (already verified): the transaction
        token, the bridge node's client chain, the forwarded headers, the deadline. A unary call is
        cancelled if the client goes away; a stream is returned once its first message is in (or after
        ``first_wait``). Raises :class:`HttpError` for every failure before the reply (or first message)."""
        request.state.target = op.agent
        metadata = forwarded_metadata(request.headers.items(), request.state.request_id)
        channel, call = self._callable(op)
        await self._connected(op.agent, channel, timeout)
        txn = await self._exchange(raw_token, op, request)
        with delegating(txn.token, txn.txn):  # the client chain reads it when the call is created
            grpc_call = call(message, timeout=timeout, metadata=metadata, wait_for_ready=False)
        try:
            if not op.streaming:
                reply = await _unless_disconnected(grpc_call, request.receive, op.agent)
                returned = [*(await grpc_call.initial_metadata() or ()), *(await grpc_call.trailing_metadata() or ())]
                return Reply(op, timeout, returned_headers(returned), message=reply)
            first = await first_message(grpc_call, self.settings.first_wait)
        except (grpc.aio.AioRpcError, MeshError) as e:
            grpc_call.cancel()
            raise from_call_error(e, op.agent, timeout) or e from None
        # the agent's headers came with (or before) its first message; a stream still quiet sends none
        headers = returned_headers(await grpc_call.initial_metadata() or ()) if first.done() else {}
        return Reply(op, timeout, headers, stream=grpc_call, first=first)

    def stream_response(self, reply: Reply, fmt: StreamFormat, encode: Callable[[Message], bytes],
                        error: Callable[[HttpError], bytes] | None = None) -> GrpcStreamResponse:
        assert reply.stream is not None and reply.first is not None
        return GrpcStreamResponse(reply.stream, reply.first, fmt, encode, agent=reply.op.agent,
                                  timeout=reply.timeout, keepalive=self.settings.keepalive,
                                  headers=reply.headers, error=error)

    def authenticate(self, request: Request) -> tuple[VerifiedToken, str]:
        token, raw = authenticate(request.headers.get("authorization"), self.node.verifier)
        request.state.principal = principal_of(token, self.config.tokens.issuer)
        return token, raw

    async def _exchange(self, raw_token: str, op: Operation, request: Request) -> Any:
        """The transaction token of this request (one per request unless ``bridge.txn_reuse``)."""
        client = request.client
        try:
            txn = await self._transactions.token(raw_token, route=f"{op.agent} {op.method}",
                                                 request_id=request.state.request_id,
                                                 client_ip=client.host if client else None)
        except TokenError as e:  # the client's token, refused by the control plane (e.g. revoked just now)
            raise HttpError(grpc.StatusCode.UNAUTHENTICATED, e.message,
                            headers={"WWW-Authenticate": WWW_AUTH_INVALID}) from None
        except MeshError as e:  # the bridge's own membership or the control plane: the mesh's to fix
            raise from_call_error(e, op.agent, 0.0) or e from None
        request.state.txn = txn.txn
        return txn

    async def _body(self, request: Request, match: Match) -> Any:
        if match.rule is not None and not match.rule.body:
            return EMPTY
        return parse_json(await self.read_json(request))

    async def read_json(self, request: Request) -> bytes:
        """The raw body of a JSON request: 415 unless JSON (UTF-8), 413 over ``bridge.max_body``."""
        ctype = request.headers.get("content-type")
        if ctype is not None:
            mime, _, params = ctype.partition(";")
            mime = mime.strip().lower()
            charset = params.strip().lower().removeprefix("charset=").strip('"') if "charset" in params.lower() \
                else "utf-8"
            if not (mime == "application/json" or mime.endswith("+json")) or charset not in ("utf-8", "utf8"):
                raise HttpError(grpc.StatusCode.INVALID_ARGUMENT,
                                "request body must be application/json (UTF-8)", status=415)
        data = await _read_limited(request, self.config.bridge.max_body)
        if ctype is None and data:
            raise HttpError(grpc.StatusCode.INVALID_ARGUMENT, "Content-Type: application/json is required",
                            status=415)
        return data

    def _callable(self, op: Operation) -> tuple[StubChannel, Callable[..., Any]]:
        """The cached multicallable of ``op`` on the current channel to its agent."""
        channel = self.node.channels.channel(op.agent)
        key = (op.agent, op.method)
        hit = self._callables.get(key)
        if hit is not None and hit[0] is channel:
            return hit
        make = channel.unary_stream if op.streaming else channel.unary_unary
        fn = make(op.method, request_serializer=op.info.input.SerializeToString,
                  response_deserializer=op.info.output.FromString)
        self._callables[key] = (channel, fn)
        return channel, fn

    async def _connected(self, agent: str, channel: StubChannel, timeout: float) -> None:
        """Waits (bounded) until the channel is connected or has failed: a dead agent answers fast."""
        state = channel.get_state(try_to_connect=True)
        if state in _SETTLED:
            return
        try:
            async with asyncio.timeout(min(self.settings.connect_timeout, timeout)):
                while state not in _SETTLED:
                    await channel.wait_for_state_change(state)
                    state = channel.get_state(try_to_connect=True)
        except TimeoutError:
            raise HttpError(grpc.StatusCode.UNAVAILABLE, f"agent {agent!r} is not reachable") from None

    # ------------------------------------------------------------------ GET /v1/agents
    async def list_agents(self, request: Request) -> Response:
        try:
            token, _ = self.authenticate(request)
        except HttpError as e:
            return e.response()
        bridge = str(self.node.spiffe_id)
        agents = []
        for agent in self.catalog.agents:
            methods = []
            for op in self.catalog.operations(agent):
                decision = self.node.policy.decide(PolicyRequest(
                    to=agent, method=op.method, peer=bridge, principal=principal_of(token, self.config.tokens.issuer),
                    roles=token.roles, chain=(bridge,), scope=scope_of(token.claims)))
                if decision.allowed:
                    methods.append({
                        "method": op.method, "path": op.path, "serverStreaming": op.streaming,
                        "bindings": [{"httpMethod": r.verb, "path": f"/v1/agents/{agent}{r.template.openapi_path()}"}
                                     for r in op.rules],
                    })
            if methods:
                agents.append({"name": agent, "methods": methods})
        return _json({"agents": agents})


async def _unless_disconnected(call: Any, receive: Receive, agent: str) -> Any:
    """The reply of a unary call; the call is cancelled (the agent sees it) if the client goes away.

    The call is awaited here; one task watches the client, and cancels the call when it goes (one task
    per request, where a task for the call too and ``asyncio.wait`` over both cost a third more). A call
    that ends cancelled is, in this order: this request's own cancellation (the server stopping: passed
    on, even if the client left in the same turn); the client gone (CANCELLED); or the call cancelled
    under the bridge (its connection closed: the agent was revoked, or its channel retired), which is
    the agent's going away (UNAVAILABLE, as the server chain answers for a handler's onward call)."""
    gone = asyncio.ensure_future(disconnected(receive))

    def client_gone(watch: asyncio.Future[None]) -> None:
        if not watch.cancelled():
            watch.exception()  # (retrieved: a receive() that failed ends the call as a disconnect does)
            call.cancel()

    gone.add_done_callback(client_gone)
    try:
        return await call
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # this request was cancelled
        if gone.done() and not gone.cancelled():
            raise HttpError(grpc.StatusCode.CANCELLED, "the client closed the request") from None
        raise HttpError(grpc.StatusCode.UNAVAILABLE, f"agent {agent!r} went away during the call") from None
    finally:
        gone.remove_done_callback(client_gone)
        gone.cancel()


def _encoder(match: Match) -> Callable[[Message], bytes]:
    response_body = match.rule.response_body if match.rule is not None else ""
    return lambda message: to_json(message, response_body)


def _json(doc: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(json.dumps(doc, separators=(",", ":")).encode(), status_code=status, headers=headers,
                    media_type="application/json")


async def _read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` (Content-Length or not)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(grpc.StatusCode.INVALID_ARGUMENT, f"request body over {limit} bytes", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(grpc.StatusCode.INVALID_ARGUMENT, f"request body over {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)
