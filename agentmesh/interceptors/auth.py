"""The admission stage: who is calling and whether it may, a thin adapter around the peer identity
cache, :func:`agentmesh.tokens.delegation.verify_caller`, the policy engine and
:func:`agentmesh.admission.still_admitted` (when an earlier decision with the same credentials holds)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import grpc

from agentmesh.a2a.skills import SEND_METHODS, requested_skill
from agentmesh.admission import Admitted, still_admitted, valid_until
from agentmesh.context import CallContext
from agentmesh.errors import PermissionDenied
from agentmesh.interceptors.identity import PeerIdentityCache, peer_pem
from agentmesh.interceptors.stage import Stage
from agentmesh.metadata import AUTHORIZATION, TXN_LINKS, TXN_TOKEN, bearer
from agentmesh.policy import PolicyEngine, PolicyRequest
from agentmesh.tokens.delegation import Caller, Checks, principal_of, verify_caller
from agentmesh.trust import TrustSnapshot

__all__ = ["AdmissionStage", "principal_of"]


class AdmissionStage(Stage):
    """Who is calling and whether it may: the peer's certificate (:class:`PeerIdentityCache`), its own
    bound token and, for a delegated call, the transaction token and the chain of hop links
    (:func:`agentmesh.tokens.delegation.verify_caller`), then the policy (deny rules, then allow rules,
    then default deny).

    A decision that admitted a call is kept for the next call with the same certificate, the same token
    headers, the same method (and A2A skill), and reused while :func:`agentmesh.admission.still_admitted`
    says it holds: the trust data, the key set and every expiry are checked again on each hit. A refusal
    is never kept. The cache holds at most ``size`` decisions (least recently used out first)."""

    def __init__(self, identities: PeerIdentityCache, checks: Checks, policy: PolicyEngine, *, me: str,
                 snapshot: Callable[[], TrustSnapshot | None], size: int = 1024) -> None:
        super().__init__()
        self.identities = identities
        self.checks = checks
        self.policy = policy
        self.me = me
        self.snapshot = snapshot
        self.size = size
        self._admitted: OrderedDict[tuple[object, ...], Admitted] = OrderedDict()
        self.hits = 0  # calls decided by an earlier decision

    async def before(self, call: CallContext, context: grpc.aio.ServicerContext) -> None:
        pem, presented = peer_pem(context)
        own = call.metadata_value(AUTHORIZATION)
        txn_token = call.metadata_value(TXN_TOKEN)
        links = call.metadata_value(TXN_LINKS)
        skill = requested_skill(call.method, call.request) if call.method in SEND_METHODS else None
        key = (pem, own, txn_token, links, call.method, skill)
        checks = self.checks
        now = checks.tokens.clock()
        trust = self.snapshot()
        keys = checks.tokens.keys
        hit = self._admitted.get(key) if pem else None
        if hit is not None and still_admitted(hit, now=now, trust=trust, keys=keys,
                                              max_staleness=checks.policy.max_staleness,
                                              revoked=checks.tokens.revoked):
            self._admitted.move_to_end(key)
            self.hits += 1
            call.peer = hit.peer
            _caller_into(call, hit.caller, txn_token, links)
            call.rule, call.decision = hit.rule, "allow"
            return
        if hit is not None:
            del self._admitted[key]
        peer = call.peer = self.identities.identify(pem, presented)
        caller = verify_caller(peer, bearer(own), txn_token, links, me=self.me, checks=checks, snapshot=trust,
                               now=now)
        _caller_into(call, caller, txn_token, links)
        decision = self.policy.decide(PolicyRequest(
            to=call.agent, method=call.method, peer=peer.uri, principal=caller.principal,
            roles=caller.roles, chain=caller.chain, scope=caller.scope, skill=skill,
        ))
        call.rule = decision.rule
        call.decision = "allow" if decision.allowed else "deny"
        if not decision.allowed:
            raise PermissionDenied(decision.reason, rule=decision.rule)
        self._admitted[key] = Admitted(peer, caller, decision.rule, trust, keys, valid_until(peer, caller))
        if len(self._admitted) > self.size:
            self._admitted.popitem(last=False)


def _caller_into(call: CallContext, caller: Caller, txn_token: str | None, links: str | None) -> None:
    call.peer_token = caller.own
    call.principal, call.roles = caller.principal, caller.roles
    if caller.txn is not None:
        call.txn, call.chain, call.hops = caller.txn, caller.chain, caller.links
        call.txn_token, call.links = txn_token, tuple(links.split(",")) if links else ()
