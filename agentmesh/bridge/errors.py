"""Every HTTP error the bridge returns, in one shape, and the one place gRPC status becomes HTTP.

The body is always ``{"code": "<gRPC status name>", "message": "...", "details": [...]}``; the HTTP
status comes from :data:`agentmesh.errors.GRPC_TO_HTTP` unless the error is HTTP-only (405, 413,
415). Internals never reach a client: INTERNAL/UNKNOWN/DATA_LOSS and transport failures get a
generic message, and only the public ``google.rpc`` detail types are passed on (never DebugInfo).

The bridge verifies the client's token itself, exchanges it for a transaction token, then calls as its
own mesh member (its certificate, its bound token, the delegation it built). An agent that refuses the
bridge's own identity or the delegation it sent answers UNAUTHENTICATED too, but that is the mesh's
failure, not the client's: it becomes a 503 with ``Retry-After`` and no ``WWW-Authenticate``, so a
client with a good token does not go and re-authenticate. :func:`refuses_bridge_identity` tells the two
apart by the ``google.rpc.ErrorInfo`` the server chain attaches to its refusals
(:mod:`agentmesh.interceptors.status`), never by wording; an UNAUTHENTICATED a handler chose itself, or
a revoked client token, stays a 401.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from starlette.responses import Response

from agentmesh.errors import MeshError, http_status_for
from agentmesh.interceptors.status import (
    RATELIMIT_LIMIT,
    RATELIMIT_REMAINING,
    RATELIMIT_RESET,
    REASON_CALLER,
    REASON_DELEGATION,
    RETRY_AFTER,
    refusal_reason,
)

__all__ = ["A2A_DOMAIN", "MESH_RETRY_AFTER", "HttpError", "error_body", "from_call_error", "from_rpc_error",
           "refuses_bridge_identity"]

log = logging.getLogger("agentmesh.bridge")

MAX_MESSAGE = 1024
#: detail types passed on to clients (google.rpc.DebugInfo, which holds stack traces, is not)
PUBLIC_DETAILS: tuple[type[Message], ...] = (
    error_details_pb2.RetryInfo, error_details_pb2.QuotaFailure, error_details_pb2.ErrorInfo,
    error_details_pb2.PreconditionFailure, error_details_pb2.BadRequest, error_details_pb2.ResourceInfo,
    error_details_pb2.Help, error_details_pb2.LocalizedMessage,
)
_PUBLIC_NAMES = frozenset(t.DESCRIPTOR.full_name for t in PUBLIC_DETAILS)
_HIDDEN = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})
#: trailing metadata of a rate-limited call -> the HTTP header carrying it
_RATE_HEADERS = {RATELIMIT_LIMIT: "RateLimit-Limit", RATELIMIT_REMAINING: "RateLimit-Remaining",
                 RATELIMIT_RESET: "RateLimit-Reset", RETRY_AFTER: "Retry-After"}
#: the ErrorInfo domain of A2A's errors: their reason is passed on even when the message is hidden
A2A_DOMAIN = "a2a-protocol.org"
#: seconds a client is asked to wait when the bridge's own mesh membership failed (Retry-After)
MESH_RETRY_AFTER = 10
class HttpError(Exception):
    """An error answer: gRPC code, safe message, optional details, extra headers."""

    def __init__(self, code: grpc.StatusCode, message: str, *, status: int | None = None,
                 details: Sequence[Mapping[str, Any]] = (), headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message[:MAX_MESSAGE]
        self.status = status if status is not None else http_status_for(code)
        self.details = list(details)
        self.headers = dict(headers or {})

    @classmethod
    def invalid(cls, message: str) -> HttpError:
        return cls(grpc.StatusCode.INVALID_ARGUMENT, message)

    @classmethod
    def not_found(cls, message: str) -> HttpError:
        return cls(grpc.StatusCode.NOT_FOUND, message)

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)

    def response(self, extra_headers: Mapping[str, str] | None = None) -> Response:
        return Response(json.dumps(self.body()).encode(), status_code=self.status,
                        headers={**self.headers, **(extra_headers or {})}, media_type="application/json")


def error_body(code: grpc.StatusCode, message: str, details: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    return {"code": code.name, "message": message, "details": list(details)}


def refuses_bridge_identity(err: grpc.aio.AioRpcError) -> bool:
    """Whether an agent's status refuses the bridge's own mesh identity (its certificate, its token,
    the delegation it sent) rather than the client: UNAUTHENTICATED with the server chain's ErrorInfo
    naming the caller or the delegation."""
    return err.code() == grpc.StatusCode.UNAUTHENTICATED and refusal_reason(err) in (REASON_CALLER, REASON_DELEGATION)


def _mesh_failure(message: str) -> HttpError:
    return HttpError(grpc.StatusCode.UNAVAILABLE, message, headers={"Retry-After": str(MESH_RETRY_AFTER)})


def from_call_error(exc: BaseException, agent: str, timeout: float) -> HttpError | None:
    """The HTTP error of a failed call: the agent's status, or a 503 when our own client chain could
    not make the call (e.g. no token from the control plane; that is the bridge's fault, never the
    caller's, so never a 401). None for anything else, which is a bug to surface as a 500."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return from_rpc_error(exc, agent, timeout)
    if isinstance(exc, MeshError):
        log.warning("the bridge cannot call %s: %s", agent, exc.message)
        return _mesh_failure("the bridge cannot reach the mesh right now")
    return None


def from_rpc_error(err: grpc.aio.AioRpcError, agent: str, timeout: float) -> HttpError:
    """The HTTP error for a failed call to ``agent``: status, safe message, details, rate-limit headers."""
    code = err.code()
    if refuses_bridge_identity(err):
        log.warning("%s refused the bridge's own mesh identity: %s", agent, err.details())
        return _mesh_failure(f"the bridge's own mesh identity was refused by {agent}: {err.details()}; "
                             "retry later")
    if code in _HIDDEN:
        return HttpError(code, f"agent {agent!r} failed to handle the request", details=[
            d for d in _public_details(err)
            if d.get("@type", "").endswith("/google.rpc.ErrorInfo") and d.get("domain") == A2A_DOMAIN])
    if code == grpc.StatusCode.UNAVAILABLE:
        return HttpError(code, f"agent {agent!r} is unavailable")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return HttpError(code, f"agent {agent!r} did not answer within {timeout:g}s")
    details = _public_details(err)
    headers = _rate_headers(err.trailing_metadata()) if code == grpc.StatusCode.RESOURCE_EXHAUSTED else {}
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "Retry-After" not in headers:
        delay = _retry_delay(details)
        if delay is not None:
            headers["Retry-After"] = str(max(1, math.ceil(delay)))
    if code == grpc.StatusCode.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    message = err.details() or code.name.lower().replace("_", " ")
    return HttpError(code, message, details=details, headers=headers)


def _public_details(err: grpc.aio.AioRpcError) -> list[dict[str, Any]]:
    try:
        status = rpc_status.from_call(err)
    except ValueError:  # a status detail whose code/message disagree with the call's: ignore it
        return []
    if status is None:
        return []
    out = []
    for any_ in status.details:
        if any_.TypeName() in _PUBLIC_NAMES:
            try:
                out.append(json_format.MessageToDict(any_))
            except (json_format.Error, TypeError, KeyError):
                continue
    return out


def _rate_headers(trailing: Any) -> dict[str, str]:
    headers = {}
    for key, value in trailing or ():
        name = _RATE_HEADERS.get(key)
        if name is not None and isinstance(value, str) and value.isdigit() and len(value) <= 12:
            headers[name] = value
    return headers


def _retry_delay(details: Sequence[Mapping[str, Any]]) -> float | None:
    for d in details:
        if d.get("@type", "").endswith("/google.rpc.RetryInfo"):
            text = str(d.get("retryDelay", ""))
            try:
                return float(text.rstrip("s"))
            except ValueError:
                return None
    return None
