"""Token authentication and authorization stages: thin adapters around
:func:`agentmesh.tokens.delegation.verify_caller` and the policy engine."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from agentmesh.a2a.skills import SEND_METHODS, requested_skill
from agentmesh.context import CallContext
from agentmesh.errors import PermissionDenied
from agentmesh.interceptors.base import Stage
from agentmesh.metadata import AUTHORIZATION, TXN_LINKS, TXN_TOKEN, bearer
from agentmesh.policy import PolicyEngine, PolicyRequest
from agentmesh.tokens.delegation import Checks, principal_of, verify_caller
from agentmesh.trust import TrustSnapshot

__all__ = ["AuthorizationStage", "TokenStage", "principal_of"]


class TokenStage(Stage):
    """Who is calling: the peer's own bound token and, for a delegated call, the transaction token and
    the chain of hop links (:mod:`agentmesh.tokens.delegation`)."""

    def __init__(self, checks: Checks, *, me: str, snapshot: Callable[[], TrustSnapshot | None]) -> None:
        super().__init__()
        self.checks = checks
        self.me = me
        self.snapshot = snapshot

    async def before(self, call: CallContext, context: grpc.aio.ServicerContext) -> None:
        peer = call.peer
        assert peer is not None, "the identity stage runs first"
        txn_token = call.metadata_value(TXN_TOKEN)
        links = call.metadata_value(TXN_LINKS)
        caller = verify_caller(peer, bearer(call.metadata_value(AUTHORIZATION)), txn_token, links, me=self.me,
                               checks=self.checks, snapshot=self.snapshot(), now=self.checks.tokens.clock())
        call.peer_token = caller.own
        call.principal, call.roles = caller.principal, caller.roles
        if caller.txn is not None:
            call.txn, call.chain, call.hops = caller.txn, caller.chain, caller.links
            call.txn_token, call.links = txn_token, tuple(links.split(",")) if links else ()


class AuthorizationStage(Stage):
    """Deny rules, then allow rules, then default deny (``agentmesh.policy``)."""

    def __init__(self, policy: PolicyEngine) -> None:
        super().__init__()
        self.policy = policy

    async def before(self, call: CallContext, context: grpc.aio.ServicerContext) -> None:
        assert call.peer is not None and call.principal is not None, "identity and token stages run first"
        skill = requested_skill(call.method, call.request) if call.method in SEND_METHODS else None
        decision = self.policy.decide(PolicyRequest(
            to=call.agent, method=call.method, peer=call.peer.uri, principal=call.principal,
            roles=call.roles, chain=call.chain, scope=call.scope, skill=skill,
        ))
        call.rule = decision.rule
        call.decision = "allow" if decision.allowed else "deny"
        if not decision.allowed:
            raise PermissionDenied(decision.reason, rule=decision.rule)
