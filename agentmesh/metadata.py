"""The gRPC metadata keys the mesh uses, in one place.

Identity never comes from metadata alone: the peer comes from the verified certificate, and every
token here is verified (and, for the peer's own token, bound to that certificate) before use.
"""

from __future__ import annotations

__all__ = ["ACTORS", "AUTHORIZATION", "IDENTITY_HEADERS", "SUBJECT_TOKEN", "TRACE_HEADERS", "bearer"]

AUTHORIZATION = "authorization"  # "Bearer <the calling peer's own token>"
SUBJECT_TOKEN = "x-agentmesh-subject-token"  # noqa: S105  (a header name)  # the original principal's token, when delegating
ACTORS = "x-agentmesh-actors"  # earlier actors of a delegation chain, comma-separated SPIFFE IDs
TRACE_HEADERS = frozenset({"traceparent", "tracestate"})  # W3C trace context

#: headers an external client must never be able to set on a mesh call (the bridge drops them)
IDENTITY_HEADERS = frozenset({
    AUTHORIZATION, SUBJECT_TOKEN, ACTORS, "x-forwarded-client-cert", "x-client-cert", "x-ssl-client-cert",
    "x-spiffe-id", "x-agentmesh-peer", "x-agentmesh-principal",
})


def bearer(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (scheme case-insensitive), else None."""
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None
