"""Policy rules -> allow/deny decisions. Pure: no I/O, no clock.

Evaluation order: every deny rule first (any match denies), then the allow rules in config order
(the first match allows), and anything else is denied ("default deny").

A rule matches when every non-empty field matches the request:

* ``to``: the name of the agent being called;
* ``methods``: full gRPC names (``/pkg.Service/Method``) with ``*`` globs; ``"*"`` matches all;
* ``from_``: the immediate, mTLS-verified peer, as an agent name of this trust domain or a full
  SPIFFE ID;
* ``roles``: any of the effective principal's roles; ``principals``: its exact token subject;
* ``via``: delegation. A delegated call (non-empty verified chain) matches only rules whose ``via``
  lists the immediate peer; an allow rule with no ``via`` and no ``chain`` matches direct calls
  only. A deny rule with neither matches direct and delegated calls alike (deny is broad), and a deny
  rule with ``via`` matches only calls delegated through those peers;
* ``chain``: the whole verified delegation chain, oldest first, as agent names or SPIFFE IDs, where
  ``*`` stands for exactly one member and ``**`` for any number (``[bridge, "**"]``: everything that
  entered at the bridge). A rule with ``chain`` matches delegated calls only;
* ``scopes``: every listed scope must be in the transaction's scope (direct calls have none);
* ``skills``: an A2A SendMessage / SendStreamingMessage that asks for one of these skills
  (:func:`agentmesh.a2a.skills.requested_skill`); a call that names no skill, or any other method,
  does not match. A rule whose ``methods`` can never be a send method is refused at load.

A delegation chain longer than ``max_depth`` is denied before any rule is looked at. The rules come
checked (:class:`agentmesh.config.PolicyRule` checks itself, :class:`agentmesh.config.MeshConfig` the
names it mentions); the engine only compiles them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from agentmesh.config import SKILL_METHODS, PolicyRule, compile_method_globs

__all__ = ["SKILL_METHODS", "Decision", "Explanation", "PolicyEngine", "PolicyRequest", "RuleCheck",
           "compile_method_globs"]


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """One call to decide on; every identity in it was verified by the mesh."""

    to: str  # name of the agent being called
    method: str  # full gRPC method name, "/pkg.Service/Method"
    peer: str  # SPIFFE ID of the immediate (mTLS-verified) caller
    principal: str  # effective subject: the peer's token sub, or the original caller's when delegated
    roles: tuple[str, ...] = ()  # the effective principal's roles
    chain: tuple[str, ...] = ()  # verified delegation chain (SPIFFE IDs), oldest first, peer last; () = direct
    scope: tuple[str, ...] = ()  # the transaction's scope (delegated calls)
    skill: str | None = None  # the A2A skill a SendMessage asks for (agentmesh.a2a.skills)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str | None  # the deciding rule, None for default deny and the depth limit
    reason: str  # safe to show the caller: names the method and what was missing


@dataclass(frozen=True, slots=True)
class RuleCheck:
    """One rule's verdict on a request (:meth:`PolicyEngine.explain`)."""

    name: str
    action: str  # "allow" | "deny"
    matched: bool
    decides: bool  # the rule that decided (a matching rule after it is shadowed)
    why: str  # the conditions that matched, or the first one that did not


@dataclass(frozen=True, slots=True)
class Explanation:
    """The decision and every rule in evaluation order: deny rules, then allow rules in config order."""

    decision: Decision
    rules: tuple[RuleCheck, ...]  # empty when the delegation chain is too deep to look at any rule


@dataclass(frozen=True, slots=True)
class _Compiled:
    name: str
    deny: bool
    to: frozenset[str]
    methods: re.Pattern[str] | None
    from_: frozenset[str]  # full SPIFFE IDs
    roles: frozenset[str]
    principals: frozenset[str]
    via: frozenset[str]  # full SPIFFE IDs
    chain: re.Pattern[str] | None  # over the chain joined by spaces
    scopes: frozenset[str]
    skills: frozenset[str] = frozenset()

    def matches(self, req: PolicyRequest, delegated: bool) -> bool:
        if self.via:
            if not delegated or req.peer not in self.via:
                return False
        elif delegated and not self.deny and self.chain is None:
            return False
        if self.chain is not None and (not delegated or self.chain.fullmatch(" ".join(req.chain)) is None):
            return False
        if self.scopes and not self.scopes.issubset(req.scope):
            return False
        if self.skills and req.skill not in self.skills:
            return False
        if self.to and req.to not in self.to:
            return False
        if self.methods is not None and self.methods.fullmatch(req.method) is None:
            return False
        if self.from_ and req.peer not in self.from_:
            return False
        if self.roles and self.roles.isdisjoint(req.roles):
            return False
        return not self.principals or req.principal in self.principals

    def mismatch(self, req: PolicyRequest, delegated: bool, rule: PolicyRule,
                 short: Callable[[str], str]) -> str | None:
        """The first condition of ``rule`` (this rule as written) that ``req`` fails, in the order of
        :meth:`matches`; None when it matches. For explanations only: :meth:`matches` stays the fast path."""
        if self.via:
            if not delegated:
                return f"via [{_list(rule.via)}]: the call is direct (via matches delegated calls only)"
            if req.peer not in self.via:
                return f"via [{_list(rule.via)}]: the call was delegated through {short(req.peer)}"
        elif delegated and not self.deny and self.chain is None:
            return "the call is delegated; an allow rule without via or chain matches direct calls only"
        if self.chain is not None:
            if not delegated:
                return f"chain [{_list(rule.chain)}]: the call is direct (chain matches delegated calls only)"
            if self.chain.fullmatch(" ".join(req.chain)) is None:
                return f"chain [{_list(rule.chain)}]: the chain is [{_list(map(short, req.chain))}]"
        if self.scopes and not self.scopes.issubset(req.scope):
            return f"scopes [{_list(rule.scopes)}]: missing {_list(sorted(self.scopes - set(req.scope)))}"
        if self.skills and req.skill not in self.skills:
            asked = f"skill {req.skill}" if req.skill is not None else "no skill"
            return f"skills [{_list(rule.skills)}]: the call asks for {asked}"
        if self.to and req.to not in self.to:
            return f"to [{_list(rule.to)}]: the call is to {req.to}"
        if self.methods is not None and self.methods.fullmatch(req.method) is None:
            return f"methods [{_list(rule.methods)}]: the method is {req.method}"
        if self.from_ and req.peer not in self.from_:
            return f"from [{_list(rule.from_)}]: the peer is {short(req.peer)}"
        if self.roles and self.roles.isdisjoint(req.roles):
            return f"roles [{_list(rule.roles)}]: the caller has [{_list(req.roles)}]"
        if self.principals and req.principal not in self.principals:
            return f"principals [{_list(rule.principals)}]: the principal is {req.principal}"
        return None


def _list(items: Iterable[str]) -> str:
    return ", ".join(items)


def _matched(rule: PolicyRule) -> str:
    """What a matching rule required, as written (``to [ingestor], roles [client], via [bridge]``)."""
    fields = (("to", rule.to), ("methods", rule.methods), ("from", rule.from_), ("roles", rule.roles),
              ("principals", rule.principals), ("via", rule.via), ("chain", rule.chain),
              ("scopes", rule.scopes), ("skills", rule.skills))
    held = [f"{name} [{_list(values)}]" for name, values in fields if values]
    if held:
        return "matches: " + ", ".join(held)
    return "matches every call" if rule.action == "deny" else "matches every direct call"


class PolicyEngine:
    """Decides calls against a fixed rule list; build once, call :meth:`decide` on every request."""

    def __init__(
        self,
        rules: Sequence[PolicyRule],
        trust_domain: str,
        *,
        max_depth: int = 4,
        cache_size: int = 4096,
    ) -> None:
        self._td = trust_domain
        self._agent_prefix = f"spiffe://{self._td}/agent/"
        self._max_depth = max_depth
        compiled = [self._compile(r) for r in rules]
        pairs = tuple(zip(compiled, rules, strict=True))  # with the rules as written, for explain
        self._ordered = tuple(p for p in pairs if p[0].deny) + tuple(p for p in pairs if not p[0].deny)
        self._deny = tuple(c for c in compiled if c.deny)
        self._allow = tuple(c for c in compiled if not c.deny)
        self._cache: dict[PolicyRequest, Decision] = {}
        self._cache_size = cache_size

    def decide(self, req: PolicyRequest) -> Decision:
        cached = self._cache.get(req)
        if cached is not None:
            return cached
        decision = self._decide(req)
        if self._cache_size > 0:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()  # cheap, bounded, and safe even if threads share the engine
            self._cache[req] = decision
        return decision

    def explain(self, req: PolicyRequest) -> Explanation:
        """Why :meth:`decide` decides as it does: every rule in evaluation order with the reason it
        matched or did not. Pure and uncached; the decision is :meth:`decide`'s."""
        decision = self._decide(req)
        if len(req.chain) > self._max_depth:
            return Explanation(decision, ())
        delegated = bool(req.chain)
        whys = [compiled.mismatch(req, delegated, rule, self._short) for compiled, rule in self._ordered]
        decider = next((i for i, why in enumerate(whys) if why is None), None)  # deny rules come first
        return Explanation(decision, tuple(
            RuleCheck(rule.name, rule.action, why is None, i == decider, why or _matched(rule))
            for i, ((_, rule), why) in enumerate(zip(self._ordered, whys, strict=True))))

    # ------------------------------------------------------------------------------ internals

    def _decide(self, req: PolicyRequest) -> Decision:
        delegated = bool(req.chain)
        if len(req.chain) > self._max_depth:
            return Decision(
                False, None,
                f"call to {req.method} on {req.to} refused: delegation chain of {len(req.chain)} "
                f"exceeds the maximum depth of {self._max_depth}",
            )
        for rule in self._deny:
            if rule.matches(req, delegated):
                return Decision(False, rule.name, f"rule {rule.name} denies {self._describe(req)}")
        for rule in self._allow:
            if rule.matches(req, delegated):
                return Decision(True, rule.name, f"rule {rule.name} allows {self._describe(req)}")
        return Decision(False, None, f"no rule allows {self._describe(req)}")

    def _describe(self, req: PolicyRequest) -> str:
        roles = ", ".join(req.roles)
        peer = self._short(req.peer)
        what = f"{req.method} (skill {req.skill})" if req.skill is not None else req.method
        if req.chain:
            return f"role(s) [{roles}] to call {what} on {req.to} via {peer}"
        return f"role(s) [{roles}] from {peer} to call {what} on {req.to}"

    def _short(self, spiffe_id: str) -> str:
        """An agent of this trust domain by name, anything else by its full SPIFFE ID."""
        if spiffe_id.startswith(self._agent_prefix):
            name = spiffe_id[len(self._agent_prefix):]
            if "/" not in name:
                return name
        return spiffe_id

    def _peer_id(self, item: str) -> str:
        """An agent name as the full SPIFFE ID of that agent of this trust domain; a SPIFFE ID as is."""
        return item if item.startswith("spiffe://") else self._agent_prefix + item

    def _compile(self, rule: PolicyRule) -> _Compiled:
        return _Compiled(
            name=rule.name,
            deny=rule.action == "deny",
            to=frozenset(rule.to),
            methods=compile_method_globs(rule.methods),
            from_=frozenset(map(self._peer_id, rule.from_)),
            roles=frozenset(rule.roles),
            principals=frozenset(rule.principals),
            via=frozenset(map(self._peer_id, rule.via)),
            chain=self._chain_pattern(rule),
            scopes=frozenset(rule.scopes),
            skills=frozenset(rule.skills),
        )

    def _chain_pattern(self, rule: PolicyRule) -> re.Pattern[str] | None:
        """``chain: [bridge, "*", "**"]`` as one regex over the chain's SPIFFE IDs joined by spaces."""
        if not rule.chain:
            return None
        parts = []
        for item in rule.chain:
            if item == "**":
                parts.append(r"(?:\S+(?: |$))*")
            elif item == "*":
                parts.append(r"\S+(?: |$)")
            else:
                parts.append(re.escape(self._peer_id(item)) + "(?: |$)")
        return re.compile("".join(parts))
