"""The one error tree of agentmesh, and the one table that maps it to gRPC and HTTP.

::

    MeshError                      INTERNAL            500
    ├── ConfigError                INVALID_ARGUMENT    400   bad config file, CLI input, unit strings
    ├── PKIError                   FAILED_PRECONDITION 400   CA missing / exists / unreadable, bad cert
    ├── AuthenticationError        UNAUTHENTICATED     401
    │   ├── PeerIdentityError                                peer cert missing, foreign, revoked
    │   └── TokenError                                       token missing, malformed, forged, expired
    │       └── DelegationError                              a transaction token or a hop link fails a check
    ├── PermissionDenied           PERMISSION_DENIED   403   verified caller that no rule allows
    │   └── PayloadBlocked                                   the payload guard refused the content
    ├── NotFound                   NOT_FOUND           404   absent, or not the caller's (the same answer)
    ├── PayloadTooLarge            INVALID_ARGUMENT    400   request over the configured size
    │   └── PayloadTooCostly                                 inspecting it would exceed the guard's work budget
    ├── RateLimited                RESOURCE_EXHAUSTED  429   carries retry_after / limit / remaining
    └── Unavailable                UNAVAILABLE         503   a backend (audit sink, limiter, peer) is down

Library errors (pyjwt, cryptography, redis, grpc) are translated into this tree where they are
caught; they never cross a public boundary. Messages never contain tokens, keys or payloads.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import grpc

#: the steps of the server chain a refusal is recorded under (audit attribute ``stage``)
DenialStage = Literal["identity", "token", "delegation", "policy", "ratelimit", "guard", "audit"]

__all__ = [
    "GRPC_TO_HTTP",
    "AuditUnavailable",
    "AuthenticationError",
    "ConfigError",
    "DelegationError",
    "DenialStage",
    "MeshError",
    "NotFound",
    "PKIError",
    "PayloadBlocked",
    "PayloadTooCostly",
    "PayloadTooLarge",
    "PeerIdentityError",
    "PermissionDenied",
    "RateLimited",
    "TokenError",
    "Unavailable",
    "http_status_for",
]

#: The conventional HTTP status of every gRPC status code (grpc-gateway / Envoy conventions).
GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def http_status_for(code: grpc.StatusCode) -> int:
    """The HTTP status for a gRPC status code; anything unknown is a 500."""
    return GRPC_TO_HTTP.get(code, 500)


class MeshError(Exception):
    """Base of every error agentmesh raises on purpose."""

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    #: the step of the server chain an audit span names when this error refuses a call
    stage: ClassVar[DenialStage] = "policy"
    #: the decision an audit span records when this error refuses a call (None: the one made so far, or
    #: "deny" if none was)
    decision: ClassVar[str | None] = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def http_status(self) -> int:
        return http_status_for(self.grpc_code)


class ConfigError(MeshError):
    """Invalid configuration or command-line input; the message names the bad key or value."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class PKIError(MeshError):
    """A CA or certificate operation cannot be done (missing CA, existing CA, unreadable key...)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class AuthenticationError(MeshError):
    """The caller could not be authenticated."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class PeerIdentityError(AuthenticationError):
    """The peer certificate is missing, not a mesh identity, or revoked."""

    stage: ClassVar[DenialStage] = "identity"
    decision: ClassVar[str | None] = "deny"


class TokenError(AuthenticationError):
    """A bearer token is missing, malformed, forged, expired, revoked or bound to another peer."""

    stage: ClassVar[DenialStage] = "token"
    decision: ClassVar[str | None] = "deny"


class DelegationError(TokenError):
    """A delegated call's transaction token or chain of hop links failed ``check`` (a short, stable name
    recorded in audit: ``txn-token``, ``link-signature``, ``link-aud``... see :mod:`agentmesh.tokens.delegation`)."""

    stage: ClassVar[DenialStage] = "delegation"

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check


class PermissionDenied(MeshError):
    """A verified caller that no policy rule allows (or a deny rule refuses)."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    decision: ClassVar[str | None] = "deny"

    def __init__(self, message: str, *, rule: str | None = None) -> None:
        super().__init__(message)
        self.rule = rule


class PayloadBlocked(PermissionDenied):
    """The payload guard found a blocked pattern in the request."""

    stage: ClassVar[DenialStage] = "guard"


class NotFound(MeshError):
    """What the caller names does not exist, or is not the caller's: one answer for both, so that
    existence does not leak (e.g. another principal's A2A task: :mod:`agentmesh.a2a.ownership`)."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class PayloadTooLarge(MeshError):
    """The request is larger than the configured limit."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    stage: ClassVar[DenialStage] = "guard"
    decision: ClassVar[str | None] = "deny"


class PayloadTooCostly(PayloadTooLarge):
    """Inspecting the request would exceed the payload guard's work budget (text that Unicode folding
    expands many times, too many messages or pattern candidates). INVALID_ARGUMENT like its parent: the
    cost is a property of the request, so a retry cannot succeed (RESOURCE_EXHAUSTED would invite one)."""


class RateLimited(MeshError):
    """The caller's token bucket is empty; ``retry_after`` says when one token will be back."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    stage: ClassVar[DenialStage] = "ratelimit"
    decision: ClassVar[str | None] = "ratelimited"

    def __init__(self, message: str, *, retry_after: float, limit: int, remaining: int, reset: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.limit = limit
        self.remaining = remaining
        self.reset = reset


class Unavailable(MeshError):
    """A backend the call depends on (audit sink, rate-limit store, control plane) is unreachable.

    Raised in a server chain, it refuses the call (a backend failing closed): the span's decision is deny.
    """

    grpc_code = grpc.StatusCode.UNAVAILABLE
    stage: ClassVar[DenialStage] = "ratelimit"
    decision: ClassVar[str | None] = "deny"


class AuditUnavailable(Unavailable):
    """``audit.required`` is set and the required exporter cannot take records: calls are refused."""

    stage: ClassVar[DenialStage] = "audit"
