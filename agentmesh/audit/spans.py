"""Small helpers that put audit facts on a span in the one agreed shape (see attributes.py).

The RPC helpers follow the OpenTelemetry semantic conventions v1.44 for gRPC (docs/rpc/grpc.md and
docs/rpc/rpc-spans.md of open-telemetry/semantic-conventions): the span name is ``rpc.method``
("agentmesh.v1.Agent/Invoke", no leading "/"), or ``grpc`` (``rpc.system.name``) for a method the
server does not serve, whose ``rpc.method`` is ``_OTHER``. All of them are pure and meant to be
called once per method or per channel, not per call: callers keep what they return.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import grpc
from opentelemetry.trace import Span

from agentmesh.audit import attributes as A
from agentmesh.audit.redact import redact_text, safe_attributes

__all__ = [
    "REQUEST_ID_KEY",
    "SERVER_ERROR_CODES",
    "STATUS_ATTRIBUTES",
    "peer_attributes",
    "record_denial",
    "record_guard",
    "rpc_attributes",
    "rpc_span_name",
    "safe_request_id",
    "server_address",
    "set_safe_attributes",
]

#: the metadata key (and HTTP header) of the bridge's request id, forwarded to every hop
REQUEST_ID_KEY = "x-request-id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

#: the statuses that make a gRPC SERVER span's status ERROR (grpc.md, ``rpc.response.status_code``
#: note [1]); any other status is the server doing its job (a refusal: PERMISSION_DENIED...), its span
#: status stays UNSET. A CLIENT span is ERROR for every status but OK.
SERVER_ERROR_CODES = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})
#: the attributes a call's end puts on its span, per status: ``rpc.response.status_code`` (the status
#: name) and, unless OK, ``error.type`` (the same name). Shared by every span: copy, never change them
#: (plain dicts: a span's ``set_attributes`` copies one at C speed)
STATUS_ATTRIBUTES: Mapping[grpc.StatusCode, dict[str, str]] = MappingProxyType({
    code: {A.RPC_RESPONSE_STATUS_CODE: code.name} if code is grpc.StatusCode.OK
    else {A.RPC_RESPONSE_STATUS_CODE: code.name, A.ERROR_TYPE: code.name}
    for code in grpc.StatusCode
})


def rpc_attributes(full_method: str | None) -> dict[str, str]:
    """``rpc.system.name`` and ``rpc.method`` of "/pkg.Service/Method" ("pkg.Service/Method"); of
    None (a method the server does not serve) ``rpc.method`` is ``_OTHER``."""
    return {A.RPC_SYSTEM_NAME: A.RPC_SYSTEM_GRPC,
            A.RPC_METHOD: full_method.lstrip("/") if full_method is not None else A.OTHER}


def rpc_span_name(full_method: str | None) -> str:
    """The span name of a call to "/pkg.Service/Method": "pkg.Service/Method"; ``grpc`` for None."""
    return full_method.lstrip("/") if full_method is not None else A.RPC_SYSTEM_GRPC


def server_address(target: str) -> dict[str, str | int]:
    """``server.address`` and ``server.port`` of a client channel's gRPC target, as grpc.md says: the
    host and port of ``host:port`` (also behind ``dns:[//authority/]``, or the one address of
    ``ipv4:``/``ipv6:``), the path of ``unix:``; any other target (several addresses) whole, no port."""
    rest = target
    if rest.startswith("dns:"):
        rest = rest[4:]
        if rest.startswith("//"):
            rest = rest[2:].partition("/")[2]
    elif rest.startswith(("ipv4:", "ipv6:")):
        rest = rest[5:]
        if "," in rest:
            return {A.SERVER_ADDRESS: target}
    elif rest.startswith("unix:"):
        path = rest[5:]
        return {A.SERVER_ADDRESS: path[2:] if path.startswith("//") else path}
    elif "://" in rest:
        return {A.SERVER_ADDRESS: target}
    host, port = _host_port(rest)
    if not host:
        return {A.SERVER_ADDRESS: target}
    return {A.SERVER_ADDRESS: host, A.SERVER_PORT: port} if port is not None else {A.SERVER_ADDRESS: host}


def peer_attributes(peer: str) -> dict[str, Any]:
    """``network.peer.address`` and ``network.peer.port`` of what ``ServicerContext.peer()`` says
    ("ipv4:10.1.2.80:65123", "ipv6:[::1]:65123", "unix:/tmp/my.sock"); none for anything else."""
    if peer.startswith(("ipv4:", "ipv6:")):
        host, port = _host_port(peer[5:])
        if host:
            out: dict[str, Any] = {A.NETWORK_PEER_ADDRESS: host}
            if port is not None:
                out[A.NETWORK_PEER_PORT] = port
            return out
    elif peer.startswith("unix:") and len(peer) > 5:
        return {A.NETWORK_PEER_ADDRESS: peer[5:]}
    return {}


def _host_port(text: str) -> tuple[str, int | None]:
    """("host", port) of "host:port", "[v6]:port", "host" or "[v6]"; ("", None) when malformed."""
    if text.startswith("["):
        host, sep, after = text[1:].partition("]")
        if not sep or (after and not after.startswith(":")):
            return "", None
        port_text = after[1:]
    elif text.count(":") > 1:  # a bare IPv6 address, no port
        return text, None
    else:
        host, _, port_text = text.partition(":")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return "", None
    return host, int(port_text)


def safe_request_id(value: object) -> str | None:
    """A request id (``x-request-id``) fit to be recorded, logged and forwarded: 1-128 characters of
    ``A-Za-z0-9._:@/+=-`` that :func:`~agentmesh.audit.redact.redact_text` leaves alone (a JWT is not a
    request id: it would be logged raw beside spans that mask it); None for anything else (a caller's
    choice, so bounded and checked)."""
    if isinstance(value, str) and _REQUEST_ID.fullmatch(value) and redact_text(value) == value:
        return value
    return None


def set_safe_attributes(span: Span, attributes: Mapping[str, object]) -> None:
    """Sets ``attributes`` on ``span`` after redaction."""
    span.set_attributes(safe_attributes(attributes))


def record_denial(span: Span, stage: A.DenialStage, reason: str) -> None:
    """Adds the ``agentmesh.denied`` event; ``reason`` is redacted, but should be safe text anyway."""
    span.add_event(A.EVENT_DENIED, safe_attributes({A.DENIAL_STAGE: stage, A.DENIAL_REASON: reason}))


def record_guard(span: Span, action: A.GuardAction, pattern: str) -> None:
    """Adds the ``agentmesh.guard`` event: which pattern matched and whether it blocked or flagged."""
    span.add_event(A.EVENT_GUARD, safe_attributes({A.GUARD_ACTION: action, A.GUARD_PATTERN: pattern}))
