"""The gRPC metadata keys the mesh uses, in one place.

Identity never comes from metadata alone: the peer comes from the verified certificate, and every
token here is verified (and, for the peer's own token, bound to that certificate) before use.
"""

from __future__ import annotations

__all__ = ["AUTHORIZATION", "IDENTITY_HEADERS", "REFLECTION_METHOD", "REFLECTION_METHODS", "REFLECTION_V1_METHOD",
           "TRACE_HEADERS", "TXN_LINKS", "TXN_TOKEN", "bearer"]

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


#: gRPC server reflection as grpcio-reflection serves it (v1alpha). Not exempt: a call to it passes the
#: whole chain, so the default-deny policy refuses it unless a rule allows it (docs/SECURITY.md).
REFLECTION_METHOD = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
#: what reflection clients (grpcurl, grpcui) ask first; not served: a caller the policy allows gets
#: UNIMPLEMENTED and falls back to v1alpha (a refused one gets PERMISSION_DENIED and stops), so a rule
#: for reflection allows both: ``methods: ["/grpc.reflection.*/ServerReflectionInfo"]``
REFLECTION_V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
#: the methods every member answers beyond its own services, which policy rules may name
REFLECTION_METHODS = (REFLECTION_METHOD, REFLECTION_V1_METHOD)
