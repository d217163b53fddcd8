"""What the bridge decides about an HTTP request before any gRPC: pure functions of header values.

* :func:`path_segments`: the raw path split and percent-decoded, refusing encoded separators
  (``%2F``, ``%5C``, ``%2E``), dot segments and invalid UTF-8, so no spelling of a path can
  reach another agent or method than the one it visibly names;
* :func:`authenticate`: the caller's JWT, verified like any principal's token of the mesh; agent
  (SPIFFE, certificate-bound) tokens are refused at the edge, and transaction tokens (``txntoken+jwt``)
  are no access tokens at all;
* :func:`parse_timeout`: ``grpc-timeout`` / ``X-Request-Timeout`` into a capped deadline;
* :func:`forwarded_metadata`: the only client headers that become gRPC metadata (an allow-list);
* :func:`returned_headers`: the only agent response metadata that becomes HTTP response headers.

A2A's service parameters (``A2A-Version``, ``A2A-Extensions``) travel both ways, for every agent: they
are plain printable ASCII values (checked), and an agent that does not speak A2A ignores them.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

import grpc

from agentmesh.audit.spans import REQUEST_ID_KEY, safe_request_id
from agentmesh.bridge.errors import HttpError
from agentmesh.errors import TokenError
from agentmesh.metadata import bearer
from agentmesh.tokens import TokenVerifier, VerifiedToken

__all__ = [
    "A2A_SERVICE_PARAMETERS",
    "FORWARDED_HEADERS",
    "WWW_AUTH_INVALID",
    "WWW_AUTH_MISSING",
    "authenticate",
    "forwarded_metadata",
    "parse_timeout",
    "path_segments",
    "request_id",
    "returned_headers",
]

#: A2A service parameters: gRPC metadata key -> HTTP header, forwarded to the agent and back
A2A_SERVICE_PARAMETERS = {"a2a-version": "A2A-Version", "a2a-extensions": "A2A-Extensions"}
#: client headers forwarded to the agent as gRPC metadata; nothing else a client sends is
FORWARDED_HEADERS = (REQUEST_ID_KEY, *A2A_SERVICE_PARAMETERS)
#: the A2A service parameters of one request, all values together (bytes): beyond, 431
MAX_SERVICE_PARAMETERS = 4096
WWW_AUTH_MISSING = 'Bearer realm="agentmesh"'
WWW_AUTH_INVALID = 'Bearer error="invalid_token"'

_ENCODED_SEPARATOR = re.compile(rb"%(?:2[fFeE]|5[cC]|00)")
_GRPC_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
#: a service parameter value: printable ASCII (what gRPC metadata carries), trimmed, at most 1 KiB
_PARAMETER = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,1022}[\x21-\x7e])?")


def path_segments(raw_path: bytes) -> list[str]:
    """The decoded segments of a raw request path (``b"/v1/agents/a"`` -> ``["v1", "agents", "a"]``).

    Raises a 400 :class:`HttpError` for an encoded ``/``, ``\\``, ``.`` or NUL, a ``.``/``..``
    segment, a backslash, or a segment that is not UTF-8 once decoded.
    """
    if not raw_path.startswith(b"/"):
        raise HttpError.invalid("request path must start with '/'")
    if _ENCODED_SEPARATOR.search(raw_path) or b"\\" in raw_path:
        raise HttpError.invalid("encoded separators ('%2F', '%2E', '%5C') are not allowed in the path")
    out = []
    for raw in raw_path[1:].split(b"/"):
        if raw in (b".", b".."):
            raise HttpError.invalid("dot segments are not allowed in the path")
        try:
            out.append(unquote_to_bytes(raw).decode("utf-8"))
        except UnicodeDecodeError:
            raise HttpError.invalid("path is not valid UTF-8 once decoded") from None
    return out


def authenticate(authorization: str | None, verifier: TokenVerifier) -> tuple[VerifiedToken, str]:
    """The verified token of an ``Authorization: Bearer`` value and the raw token, or a 401."""
    token = bearer(authorization)
    if token is None:
        raise HttpError(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token",
                        headers={"WWW-Authenticate": WWW_AUTH_MISSING})
    try:
        verified = verifier.verify_unbound(token)  # agent tokens are refused here too
    except TokenError as e:
        raise HttpError(grpc.StatusCode.UNAUTHENTICATED, e.message,
                        headers={"WWW-Authenticate": WWW_AUTH_INVALID}) from None
    return verified, token


def parse_timeout(grpc_timeout: str | None, request_timeout: str | None, *, default: float,
                  maximum: float) -> float:
    """The deadline (seconds) asked for by ``grpc-timeout`` (``500m``, ``2S``) or ``X-Request-Timeout``
    (seconds), the smaller if both; ``default`` if neither; never above ``maximum``."""
    asked: list[float] = []
    if grpc_timeout is not None:
        m = _GRPC_TIMEOUT.fullmatch(grpc_timeout.strip())
        if m is None:
            raise HttpError.invalid("grpc-timeout: expected 1-8 digits and a unit (H, M, S, m, u, n), e.g. 500m")
        asked.append(int(m.group(1)) * _UNITS[m.group(2)])
    if request_timeout is not None:
        try:
            value = float(request_timeout.strip())
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise HttpError.invalid("X-Request-Timeout: expected a number of seconds, e.g. 2.5")
        asked.append(value)
    if not asked:
        return min(default, maximum)
    timeout = min(asked)
    if timeout <= 0:
        raise HttpError.invalid("request timeout must be positive")
    return min(timeout, maximum)


def request_id(value: str | None) -> str:
    """The client's ``X-Request-Id`` if it is a safe token (1-128 characters of ``A-Za-z0-9._:@/+=-``, and
    not a credential such as a JWT, as every member checks it: :func:`agentmesh.audit.spans.safe_request_id`),
    else a fresh one (the response, the access log, the spans and the agents all get that one)."""
    return safe_request_id(value) or uuid.uuid4().hex


def forwarded_metadata(headers: Iterable[tuple[str, str]], request_id: str) -> list[tuple[str, str]]:
    """The gRPC metadata of a call: the request id, then the allow-listed client headers.

    Identity headers, ``Grpc-Metadata-*``, ``x-forwarded-client-cert`` and everything else a
    client sends are dropped here (the client chain drops identity headers a second time).
    """
    out = [(REQUEST_ID_KEY, request_id)]
    size = 0
    for key, value in headers:
        k = key.lower()
        if k in A2A_SERVICE_PARAMETERS and _PARAMETER.fullmatch(value.strip()):
            size += len(k) + len(value.strip())
            if size > MAX_SERVICE_PARAMETERS:  # many 1 KiB headers would overrun the agent's metadata limit
                raise HttpError(grpc.StatusCode.INVALID_ARGUMENT,
                                f"A2A service parameters over {MAX_SERVICE_PARAMETERS} bytes", status=431)
            out.append((k, value.strip()))
    return out


def returned_headers(metadata: Iterable[tuple[str, str | bytes]]) -> dict[str, str]:
    """The HTTP response headers of an agent's response metadata: the A2A service parameters only
    (repeated keys joined with ``", "``); binary and malformed values are dropped."""
    values: dict[str, list[str]] = {}
    for key, value in metadata:
        header = A2A_SERVICE_PARAMETERS.get(key.lower())
        if header is not None and isinstance(value, str) and _PARAMETER.fullmatch(value.strip()):
            values.setdefault(header, []).append(value.strip())
    return {header: ", ".join(v) for header, v in values.items()}
