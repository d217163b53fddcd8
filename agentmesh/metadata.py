"""The gRPC metadata keys the mesh uses, in one place.

Identity never comes from metadata alone: the peer comes from the verified certificate, and every
token here is verified (and, for the peer's own token, bound to that certificate) before use.
"""

from __future__ import annotations

__all__ = ["AUTHORIZATION", "IDENTITY_HEADERS", "TRACE_HEADERS", "TXN_LINKS", "TXN_TOKEN", "bearer"]

AUTHORIZATION = "authorization"  # "Bearer <the calling peer's own token>"
TXN_TOKEN = "txn-token"  # noqa: S105  (a header name)  # the transaction token of a delegated call, unchanged
TXN_LINKS = "txn-links"  # the signed hop links of a delegated call, oldest first, comma-separated
TRACE_HEADERS = frozenset({"traceparent", "tracestate"})  # W3C trace context

#: headers an external client must never be able to set on a mesh call (the bridge drops them)
IDENTITY_HEADERS = frozenset({
    AUTHORIZATION, TXN_TOKEN, TXN_LINKS, "x-agentmesh-subject-token", "x-agentmesh-actors",
    "x-forwarded-client-cert", "x-client-cert", "x-ssl-client-cert",
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
