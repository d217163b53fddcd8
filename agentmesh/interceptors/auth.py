"""Token authentication and authorization stages (thin adapters around the verifier and the policy)."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from agentmesh.context import CallContext
from agentmesh.errors import ConfigError, PermissionDenied, TokenError
from agentmesh.identity import SpiffeId
from agentmesh.interceptors.base import Stage
from agentmesh.metadata import ACTORS, AUTHORIZATION, SUBJECT_TOKEN, bearer
from agentmesh.policy import PolicyEngine, PolicyRequest
from agentmesh.tokens import TokenVerifier, VerifiedToken

__all__ = ["AuthorizationStage", "TokenStage", "principal_of"]

MAX_ACTORS_HEADER = 4096


def principal_of(token: VerifiedToken, mesh_issuer: str) -> str:
    """The principal a verified token names: its subject for the mesh issuer; ``<iss>#<sub>`` for an
    external issuer, so another issuer can never take the name of a mesh principal (or share its
    rate-limit bucket)."""
    return token.sub if token.iss == mesh_issuer else f"{token.iss}#{token.sub}"


class TokenStage(Stage):
    """The peer's own token must verify and be bound to the peer's certificate. A delegating peer
    also sends the original principal's token, which becomes the effective principal; the actor
    chain is the claimed earlier actors plus the verified peer."""

    def __init__(self, verifier: TokenVerifier, *, mesh_issuer: str,
                 member_revoked: Callable[[str | None], bool] = lambda name: False) -> None:
        super().__init__()
        self.verifier = verifier
        self.mesh_issuer = mesh_issuer
        self.member_revoked = member_revoked

    async def before(self, call: CallContext, context: grpc.aio.ServicerContext) -> None:
        peer = call.peer
        assert peer is not None, "the identity stage runs first"
        token = bearer(call.metadata_value(AUTHORIZATION))
        if token is None:
            raise TokenError(f"missing bearer token for {call.method}")
        try:
            own = self.verifier.verify(token, peer_thumbprint=peer.thumbprint, peer_spiffe_id=peer.uri,
                                       require_binding=True)
        except TokenError as e:
            raise TokenError(f"{e.message} (caller's own token, {call.method})") from None
        if own.iss != self.mesh_issuer:  # only the control plane speaks for mesh members
            raise TokenError(f"a caller's own token must come from the mesh issuer ({call.method})")
        call.peer_token = own
        subject = call.metadata_value(SUBJECT_TOKEN)
        claimed = call.metadata_value(ACTORS)
        if subject is None:
            if claimed:
                raise TokenError(f"delegation chain without a subject token for {call.method}")
            call.principal, call.roles = own.sub, own.roles
            return
        try:
            sub = self.verifier.verify_unbound(subject)
        except TokenError as e:
            raise TokenError(f"{e.message} (delegated subject token, {call.method})") from None
        if sub.sub.strip().lower().startswith("spiffe:"):
            raise TokenError("a delegated subject token must belong to a principal, not to an agent")
        if claimed and len(claimed) > MAX_ACTORS_HEADER:
            raise TokenError("delegation chain too long")
        earlier = tuple(a for a in (claimed or "").split(",") if a)
        for actor in earlier:  # claimed by the (verified) peer: must at least be members of this mesh
            try:
                sid = SpiffeId.parse(actor)
                if sid.trust_domain != peer.spiffe_id.trust_domain:
                    raise ConfigError("foreign trust domain")
            except ConfigError:
                raise TokenError("delegation chain holds an entry that is not a SPIFFE ID of this mesh") from None
            if self.member_revoked(sid.agent_name):  # a delegation a revoked member started
                raise TokenError(f"delegation chain holds revoked member {sid.agent_name}")
        call.subject_token, call.raw_subject_token = sub, subject
        call.principal, call.roles = principal_of(sub, self.mesh_issuer), sub.roles
        call.actors = (*earlier, peer.uri)


class AuthorizationStage(Stage):
    """Deny rules, then allow rules, then default deny (``agentmesh.policy``)."""

    def __init__(self, policy: PolicyEngine) -> None:
        super().__init__()
        self.policy = policy

    async def before(self, call: CallContext, context: grpc.aio.ServicerContext) -> None:
        assert call.peer is not None and call.principal is not None, "identity and token stages run first"
        decision = self.policy.decide(PolicyRequest(
            to=call.agent, method=call.method, peer=call.peer.uri, principal=call.principal,
            roles=call.roles, actors=call.actors,
        ))
        call.rule = decision.rule
        call.decision = "allow" if decision.allowed else "deny"
        if not decision.allowed:
            raise PermissionDenied(decision.reason, rule=decision.rule)
