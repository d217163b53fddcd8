"""The one place where mesh errors become gRPC status (code, message, details, trailing metadata)."""

from __future__ import annotations

import math

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from agentmesh.errors import AuthenticationError, DelegationError, MeshError, RateLimited

__all__ = [
    "ERROR_DOMAIN",
    "RATELIMIT_LIMIT",
    "RATELIMIT_REMAINING",
    "RATELIMIT_RESET",
    "REASON_CALLER",
    "REASON_DELEGATION",
    "REASON_PRINCIPAL",
    "RETRY_AFTER",
    "refusal_reason",
    "status_of",
]

#: google.rpc.ErrorInfo on every authentication refusal of the server chain: who has to fix it. The
#: caller (its certificate or own token: the mesh's fault when the caller is the bridge), the delegation it
#: sent (the transaction token or links a member built), or the principal (its token was revoked).
ERROR_DOMAIN = "agentmesh"
REASON_CALLER = "CALLER_REFUSED"
REASON_DELEGATION = "DELEGATION_REFUSED"
REASON_PRINCIPAL = "PRINCIPAL_REFUSED"
#: delegation checks that refuse the principal's own token (revoked, expired, forged...), not what a member built
PRINCIPAL_CHECKS = frozenset({"txn-revoked", "subject-token"})

RATELIMIT_LIMIT = "x-ratelimit-limit"
RATELIMIT_REMAINING = "x-ratelimit-remaining"
RATELIMIT_RESET = "x-ratelimit-reset"
RETRY_AFTER = "retry-after"


def status_of(err: MeshError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str | bytes], ...]]:
    """(code, message, trailing metadata) for an error; RateLimited carries google.rpc.RetryInfo."""
    code, message = err.grpc_code, err.message
    if isinstance(err, AuthenticationError):
        return code, message, _error_info(err)
    if not isinstance(err, RateLimited):
        return code, message, ()
    delay = max(0.0, err.retry_after)
    secs = int(delay)
    retry = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=secs, nanos=int((delay - secs) * 1e9))
    )
    detail = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message)
    detail.details.add().Pack(retry)
    st = rpc_status.to_status(detail)
    md: tuple[tuple[str, str | bytes], ...] = (
        *st.trailing_metadata,
        (RATELIMIT_LIMIT, str(err.limit)),
        (RATELIMIT_REMAINING, str(max(0, err.remaining))),
        (RATELIMIT_RESET, str(math.ceil(err.reset))),
        (RETRY_AFTER, str(max(1, math.ceil(delay)))),
    )
    return code, message, md


def _error_info(err: AuthenticationError) -> tuple[tuple[str, str | bytes], ...]:
    if isinstance(err, DelegationError):
        reason = REASON_PRINCIPAL if err.check in PRINCIPAL_CHECKS else REASON_DELEGATION
        info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata={"check": err.check})
    else:
        info = error_details_pb2.ErrorInfo(reason=REASON_CALLER, domain=ERROR_DOMAIN)
    detail = status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message=err.message)
    detail.details.add().Pack(info)
    return tuple(rpc_status.to_status(detail).trailing_metadata)


def refusal_reason(err: grpc.aio.AioRpcError) -> str | None:
    """The reason of the server chain's ErrorInfo on a failed call (``REASON_*``), or None."""
    try:
        status = rpc_status.from_call(err)
    except ValueError:  # a status detail whose code/message disagree with the call's
        return None
    for any_ in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if any_.Unpack(info) and info.domain == ERROR_DOMAIN:
            return str(info.reason)
    return None
