"""A2A's JSON-RPC 2.0 binding: ``POST /v1/agents/{agent}``, for agents that serve ``lf.a2a.v1.A2AService``.

The request is one JSON-RPC request object whose ``method`` is an A2A v1.0 method (the gRPC method name:
``SendMessage``, ``GetTask``...) and whose ``params`` are its request message in proto3 JSON; the answer
is a response object whose ``result`` is the reply in proto3 JSON. ``SendStreamingMessage`` and
``SubscribeToTask`` answer with Server-Sent Events, each ``data:`` a response object with the request's
id; a failure after the first event is an ``event: error`` with an error response object.

The call takes exactly the REST routes' path (:meth:`agentmesh.bridge.gateway.Gateway.call`): the bearer
token verified and exchanged for a transaction token, the bridge node's client chain, the forwarded
headers, ``bridge.max_body``, the deadline headers, and a client that goes away cancels the call.

Errors are JSON-RPC error objects (:mod:`agentmesh.bridge.a2a_errors`): -32700 (not JSON), -32600 (not
a request object; batches and notifications are refused as such: A2A uses neither), -32601 (no such
A2A method), -32602 (params that are not the method's request message), A2A's codes for the agent's
errors (-32001 task not found...). They are answered with HTTP 200, except refusals of the bridge or
the mesh, which keep their status (401 + ``WWW-Authenticate``, 403, 413, 415, 429 + ``Retry-After``, 503).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response

from agentmesh.bridge.a2a_errors import INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR, jsonrpc_error
from agentmesh.bridge.edge import path_segments
from agentmesh.bridge.errors import HttpError
from agentmesh.bridge.gateway import Gateway, is_a2a
from agentmesh.bridge.routes import Operation
from agentmesh.bridge.streaming import SSE
from agentmesh.bridge.transcode import EMPTY, build_request, parse_json, to_json

__all__ = ["JsonRpc", "RpcError"]

RequestId = str | int | None
_MEMBERS = frozenset({"jsonrpc", "id", "method", "params"})
_MAX_ID = 256


class RpcError(Exception):
    """A JSON-RPC protocol error (answered with HTTP 200)."""

    def __init__(self, code: int, message: str, rpc_id: RequestId = None) -> None:
        super().__init__(message)
        self.code, self.message, self.rpc_id = code, message, rpc_id


class JsonRpc:
    """The JSON-RPC endpoint of every A2A agent of the catalog."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._methods: dict[str, dict[str, Operation]] = {}
        for op in gateway.catalog.operations():
            if is_a2a(op):
                self._methods.setdefault(op.agent, {})[op.info.name] = op

    async def handle(self, request: Request) -> Response:
        raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
        try:
            segments = path_segments(raw_path)
        except HttpError as e:
            return e.response()
        methods = self._methods.get(segments[2]) if len(segments) == 3 else None
        if methods is None:
            return HttpError.not_found(f"agent {segments[2]!r} does not serve A2A's JSON-RPC binding"
                                       if len(segments) == 3 else "no such route").response()
        rpc_id: RequestId = None
        try:
            _, raw_token = self.gateway.authenticate(request)
            timeout = self.gateway.timeout(request)
            rpc_id, op, message = parse_request(await self.gateway.read_json(request), methods)
            reply = await self.gateway.call(request, raw_token, op, message, timeout)
        except RpcError as e:
            return _answer({"jsonrpc": "2.0", "id": e.rpc_id, "error": {"code": e.code, "message": e.message}})
        except HttpError as e:
            status, error = jsonrpc_error(e)
            return _answer({"jsonrpc": "2.0", "id": rpc_id, "error": error}, status, e.headers)
        if reply.message is not None:
            return Response(_result(rpc_id, reply.message), headers=reply.headers, media_type="application/json")

        def failed(e: HttpError) -> bytes:
            return SSE.error_record({"jsonrpc": "2.0", "id": rpc_id, "error": jsonrpc_error(e)[1]})

        return self.gateway.stream_response(reply, SSE, lambda m: _result(rpc_id, m), failed)


def parse_request(body: bytes, methods: Mapping[str, Operation]) -> tuple[RequestId, Operation, Message]:
    """(id, operation, request message) of a JSON-RPC request body, or an :class:`RpcError`. Pure."""
    try:
        doc = parse_json(body)
    except HttpError as e:
        raise RpcError(PARSE_ERROR, f"parse error: {e.message}") from None
    if doc is EMPTY:
        raise RpcError(PARSE_ERROR, "parse error: the request body is empty")
    if isinstance(doc, list):
        raise RpcError(INVALID_REQUEST, "batch requests are not supported: send one request object per call")
    if not isinstance(doc, dict):
        raise RpcError(INVALID_REQUEST, "the request must be a JSON-RPC request object")
    rpc_id = doc.get("id")
    if not _valid_id(rpc_id):
        raise RpcError(INVALID_REQUEST, "id must be a string or an integer")
    if "id" not in doc:
        raise RpcError(INVALID_REQUEST, "notifications are not supported: every A2A request needs an id")
    if doc.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, "jsonrpc must be exactly \"2.0\"", rpc_id)
    extra = sorted(set(doc) - _MEMBERS)
    if extra:
        raise RpcError(INVALID_REQUEST, f"unknown member {extra[0][:64]!r} in the request object", rpc_id)
    method = doc.get("method")
    if not isinstance(method, str) or not method:
        raise RpcError(INVALID_REQUEST, "method must be a non-empty string", rpc_id)
    op = methods.get(method)
    if op is None:
        raise RpcError(METHOD_NOT_FOUND, f"method not found: {method[:64]!r}", rpc_id)
    params = doc.get("params", {})
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, f"params must be an object ({op.info.input.DESCRIPTOR.full_name})", rpc_id)
    try:
        message = build_request(op.info.input(), None, params, {})
    except HttpError as e:
        raise RpcError(INVALID_PARAMS, e.message, rpc_id) from None
    return rpc_id, op, message


def _valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return value is None or isinstance(value, int) or (isinstance(value, str) and len(value) <= _MAX_ID)


def _result(rpc_id: RequestId, message: Message) -> bytes:
    return b'{"jsonrpc":"2.0","id":' + json.dumps(rpc_id).encode() + b',"result":' + to_json(message) + b"}"


def _answer(doc: dict[str, Any], status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(json.dumps(doc, separators=(",", ":")).encode(), status_code=status, headers=headers,
                    media_type="application/json")
