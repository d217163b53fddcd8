"""The admission stage: who is calling and whether it may, a thin adapter around the peer identity
cache, :func:`agentmesh.tokens.delegation.verify_caller`, the policy engine and
:func:`agentmesh.admission.still_admitted` (when an earlier decision with the same credentials holds)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import grpc

from agentmesh.a2a.skills import SEND_METHODS, requested_skill
from agentmesh.admission import Admitted, fresh, same_trust_data, still_admitted, valid_until
from agentmesh.context import CallContext
from agentmesh.errors import MeshError, PermissionDenied
from agentmesh.interceptors.identity import PeerIdentityCache, peer_pem
from agentmesh.interceptors.stage import Stage
from agentmesh.metadata import AUTHORIZATION, TXN_LINKS, TXN_TOKEN, bearer
from agentmesh.policy import PolicyEngine, PolicyRequest
from agentmesh.tokens.delegation import Caller, Checks, principal_of, verify_caller
from agentmesh.trust import TrustSnapshot

__all__ = ["AdmissionStage", "principal_of"]


#: the longest A2A skill name a decision is kept for (longer ones are decided on every call)
MAX_KEPT_SKILL = 256


class AdmissionStage(Stage):
    """Who is calling and whether it may: the peer's certificate (:class:`PeerIdentityCache`), its own
    bound token and, for a delegated call, the transaction token and the chain of hop links
    (:func:`agentmesh.tokens.delegation.verify_caller`), then the policy (deny rules, then allow rules,
    then default deny), in this order: a request is only read (its A2A skill) once its caller is known.

    A decision that admitted a call is kept for the next call with the same certificate, the same tokens,
    the same method (and A2A skill), and reused while :func:`agentmesh.admission.still_admitted` says it
    holds: the trust data, the key set and every expiry are checked again on each hit. A refusal is never
    kept, nor a decision about a method the server does not serve (its name is the caller's choice) or a
    very long skill name. The cache holds at most ``size`` decisions (least recently used out first), and
    is emptied when the trust data changes (a heartbeat that re-confirms it keeps it)."""

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
        self._served: set[str] = set()  # the methods the server serves (their handlers were wrapped)
        self._trust: TrustSnapshot | None = None  # the trust data of the current epoch
        self._epoch = 0
        self.hits = 0  # calls decided by an earlier decision

    def applies_to(self, method: str) -> bool:
        self._served.add(method)  # asked once per method the server serves, when its handler is wrapped
        return True

    def _epoch_of(self, trust: TrustSnapshot | None) -> int:
        if trust is not self._trust:
            if not same_trust_data(self._trust, trust):
                self._epoch += 1
                self._admitted.clear()  # nothing decided under other trust data is kept
            self._trust = trust
        return self._epoch

    async def before(self, call: CallContext, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        pem, presented = peer_pem(context)
        own = bearer(call.metadata_value(AUTHORIZATION))
        txn_token = call.metadata_value(TXN_TOKEN)
        links = call.metadata_value(TXN_LINKS)
        checks = self.checks
        now = checks.tokens.clock()
        trust = self.snapshot()
        epoch = self._epoch_of(trust)
        keys = checks.tokens.keys
        skill: str | None = None
        unreadable: MeshError | None = None  # a request whose skill cannot be read: refused once the caller is known
        if call.method in SEND_METHODS:
            try:
                skill = requested_skill(call.method, call.request)
            except MeshError as e:
                unreadable = e
        key = (pem, own, txn_token, links, call.method, skill)
        keep = unreadable is None and pem is not None and call.method in self._served \
            and (skill is None or len(skill) <= MAX_KEPT_SKILL)
        hit = self._admitted.get(key) if keep else None
        if hit is not None and still_admitted(hit, now=now, epoch=epoch, keys=keys, revoked=checks.tokens.revoked,
                                              trust_fresh=fresh(trust, now, checks.policy.max_staleness)):
            self._admitted.move_to_end(key)
            self.identities.touch(pem)  # a peer served from here stays "known" to the identity cache
            self.hits += 1
            call.peer = hit.peer
            _caller_into(call, hit.caller, txn_token, links)
            call.rule, call.decision = hit.rule, "allow"
            return
        if hit is not None:
            del self._admitted[key]
        peer = call.peer = self.identities.identify(pem, presented)
        caller = verify_caller(peer, own, txn_token, links, me=self.me, checks=checks, snapshot=trust, now=now)
        _caller_into(call, caller, txn_token, links)
        if unreadable is not None:
            raise unreadable
        decision = self.policy.decide(PolicyRequest(
            to=call.agent, method=call.method, peer=peer.uri, principal=caller.principal,
            roles=caller.roles, chain=caller.chain, scope=caller.scope, skill=skill,
        ))
        call.rule = decision.rule
        call.decision = "allow" if decision.allowed else "deny"
        if not decision.allowed:
            raise PermissionDenied(decision.reason, rule=decision.rule)
        if keep:
            self._admitted[key] = Admitted(peer, caller, decision.rule, epoch, keys, now, valid_until(peer, caller))
            if len(self._admitted) > self.size:
                self._admitted.popitem(last=False)


def _caller_into(call: CallContext, caller: Caller, txn_token: str | None, links: str | None) -> None:
    call.peer_token = caller.own
    call.principal, call.roles = caller.principal, caller.roles
    if caller.txn is not None:
        call.txn, call.chain, call.hops = caller.txn, caller.chain, caller.links
        call.txn_token, call.links = txn_token, tuple(links.split(",")) if links else ()
