"""A2A's two error shapes, for the bridge's A2A routes (methods of ``lf.a2a.v1.A2AService``). Pure.

* the REST binding (HTTP+JSON): a ``google.rpc.Status`` in JSON,
  ``{"error": {"code": <HTTP status>, "status": "<gRPC status name>", "message": "...", "details": [...]}}``;
* the JSON-RPC binding: an error object ``{"code": <JSON-RPC code>, "message": "...", "data": [...]}``,
  its ``data`` the same details.

The details always hold a ``google.rpc.ErrorInfo`` first, which is what A2A clients map to an error
type. An agent's own error (A2A puts ``ErrorInfo{domain: "a2a-protocol.org", reason: "TASK_NOT_FOUND"}``
in ``grpc-status-details-bin``) is passed on as it came; a refusal of the bridge or the mesh (401, 403,
429, 503, ...) keeps its HTTP status and gets the mesh's ErrorInfo: domain ``agentmesh``, the server
chain's reason when it sent one (``CALLER_REFUSED``...), else one named after the status
(``UNAUTHENTICATED``, ``PERMISSION_DENIED``, ``RATE_LIMITED``...).

JSON-RPC codes: A2A's reasons map to A2A's codes (-32001 task not found ... -32009) and JSON-RPC's own
(-32600 ... -32603); an error with none of them (a refusal of the mesh) is ``-32000`` with the mesh's
ErrorInfo. A JSON-RPC error is answered with HTTP 200, as A2A's JSON-RPC binding and the a2a-sdk do,
unless it is a refusal of the mesh: those keep the HTTP status (and ``WWW-Authenticate``,
``Retry-After``) they have on every other route.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from agentmesh.bridge.errors import A2A_DOMAIN, HttpError
from agentmesh.interceptors.status import ERROR_DOMAIN

__all__ = [
    "A2A_DOMAIN",
    "ERROR_INFO_TYPE",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "JSONRPC_CODES",
    "MESH_ERROR",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "a2a_reason",
    "jsonrpc_error",
    "rest_body",
]

ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
#: a refusal of the bridge or the mesh (JSON-RPC's implementation-defined server error)
MESH_ERROR = -32000

#: A2A's ErrorInfo reasons -> JSON-RPC error codes (A2A v1.0, as the a2a-sdk maps them)
JSONRPC_CODES: Mapping[str, int] = {
    "TASK_NOT_FOUND": -32001,
    "TASK_NOT_CANCELABLE": -32002,
    "PUSH_NOTIFICATION_NOT_SUPPORTED": -32003,
    "UNSUPPORTED_OPERATION": -32004,
    "CONTENT_TYPE_NOT_SUPPORTED": -32005,
    "INVALID_AGENT_RESPONSE": -32006,
    "EXTENDED_AGENT_CARD_NOT_CONFIGURED": -32007,
    "EXTENSION_SUPPORT_REQUIRED": -32008,
    "VERSION_NOT_SUPPORTED": -32009,
    "INVALID_REQUEST": INVALID_REQUEST,
    "METHOD_NOT_FOUND": METHOD_NOT_FOUND,
    "INVALID_PARAMS": INVALID_PARAMS,
    "INTERNAL_ERROR": INTERNAL_ERROR,
}
#: the mesh's reason for a refusal that came without an ErrorInfo (default: the status name)
_MESH_REASONS = {grpc.StatusCode.RESOURCE_EXHAUSTED: "RATE_LIMITED"}
_HIDDEN = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})


def _error_info(details: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    return next((d for d in details if d.get("@type") == ERROR_INFO_TYPE), None)


def a2a_reason(details: Sequence[Mapping[str, Any]]) -> str | None:
    """The A2A reason of an error's details (its first ErrorInfo, if in A2A's domain), or None."""
    info = _error_info(details)
    if info is None or info.get("domain") != A2A_DOMAIN:
        return None
    reason = info.get("reason")
    return reason if isinstance(reason, str) else None


def _details(error: HttpError) -> list[dict[str, Any]]:
    """The error's details, led by an ErrorInfo: its own, else the mesh's."""
    details = [dict(d) for d in error.details]
    if _error_info(details) is None:
        reason = _MESH_REASONS.get(error.code, error.code.name)
        details.insert(0, {"@type": ERROR_INFO_TYPE, "reason": reason, "domain": ERROR_DOMAIN, "metadata": {}})
    return details


def rest_body(error: HttpError) -> dict[str, Any]:
    """A2A's REST error body for ``error`` (its HTTP status stays ``error.status``)."""
    return {"error": {"code": error.status, "status": error.code.name, "message": error.message,
                      "details": _details(error)}}


def jsonrpc_error(error: HttpError) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON-RPC error object) for ``error``: 200 unless it is a refusal of the mesh."""
    reason = a2a_reason(error.details)
    code = JSONRPC_CODES.get(reason or "")
    if code is None and error.code in _HIDDEN:
        code = INTERNAL_ERROR
    if code is not None:
        return 200, {"code": code, "message": error.message, "data": _details(error)}
    return error.status, {"code": MESH_ERROR, "message": error.message, "data": _details(error)}
