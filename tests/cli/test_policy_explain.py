"""PolicyEngine.explain (pure): it agrees with decide on the whole decision table and on random rule sets,
lists every rule in evaluation order (deny before allow), and says why each one matched or not."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import strategies as st
from properties import profiles, run
from test_policy import CASES, RULES, TD, delegated, req

from agentmesh.config import PolicyRule
from agentmesh.errors import ConfigError
from agentmesh.policy import PolicyEngine, PolicyRequest

PROFILES = profiles(200, 2000)


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(RULES, TD, max_depth=4)


@pytest.mark.parametrize(("request_", "allowed", "rule"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_explain_agrees_with_the_decision_table(engine: PolicyEngine, request_: PolicyRequest, allowed: bool,
                                                rule: str | None) -> None:
    ex = engine.explain(request_)
    assert ex.decision == engine.decide(request_)
    deciding = [r.name for r in ex.rules if r.decides]
    if len(request_.chain) > 4:
        assert ex.rules == ()
        return
    assert deciding == ([rule] if rule is not None else [])
    assert [r.name for r in ex.rules] == [r.name for r in RULES if r.action == "deny"] + \
        [r.name for r in RULES if r.action == "allow"]
    for r in ex.rules:
        assert r.why.startswith("matches") == r.matched


def test_reasons_name_the_condition_that_failed(engine: PolicyEngine) -> None:
    why = {r.name: r.why for r in engine.explain(delegated("validator", peer="summarizer")).rules}
    assert why["no-outside-validator"] == "via [bridge]: the call was delegated through summarizer"
    assert why["nobody-charges"] == "methods [/other.v1.Billing/Charge]: the method is /agentmesh.v1.Agent/Invoke"
    assert why["client-starts-workflow"] == "via [bridge]: the call was delegated through summarizer"
    assert why["ingestor-to-summarizer"] == ("the call is delegated; an allow rule without via or chain matches "
                                             "direct calls only")
    why = {r.name: r.why for r in engine.explain(req("summarizer", peer="validator", roles=("guest",))).rules}
    assert why["ingestor-to-summarizer"] == "from [ingestor]: the peer is validator"
    assert why["admins-describe"] == "methods [/*/Describe]: the method is /agentmesh.v1.Agent/Invoke"
    assert why["alice-via-bridge"] == ("via [spiffe://example.org/agent/bridge]: the call is direct (via matches "
                                       "delegated calls only)")
    why = {r.name: r.why for r in engine.explain(req("summarizer", roles=("guest",))).rules}
    assert why["ingestor-to-summarizer"] == "roles [ingestor]: the caller has [guest]"
    assert why["alice-anything"] == ("principals [alice@example.org]: the principal is "
                                     "spiffe://example.org/agent/ingestor")


def test_a_shadowed_match_is_not_the_decision() -> None:
    e = PolicyEngine((PolicyRule("first", "allow", to=("a",)), PolicyRule("second", "allow", to=("a",)),
                      PolicyRule("late-deny", "deny", to=("a",), roles=("banned",))), TD)
    ex = e.explain(req("a", roles=("banned",)))
    assert [(r.name, r.matched, r.decides) for r in ex.rules] == [
        ("late-deny", True, True), ("first", True, False), ("second", True, False)]
    assert not ex.decision.allowed and ex.decision.rule == "late-deny"
    ex = e.explain(req("a"))
    assert [(r.name, r.decides) for r in ex.rules if r.matched] == [("first", True), ("second", False)]
    assert ex.rules[0].why == "roles [banned]: the caller has []"


def test_the_rules_as_written_show_in_a_match() -> None:
    e = PolicyEngine((PolicyRule("everyone", "allow"), PolicyRule("no-one", "deny", to=("x",)),
                      PolicyRule("chain", "allow", chain=("bridge", "**"), scopes=("docs:read",))), TD)
    ex = e.explain(PolicyRequest(to="y", method="/a.B/C", peer=f"spiffe://{TD}/agent/z", principal="p",
                                 chain=(f"spiffe://{TD}/agent/bridge", f"spiffe://{TD}/agent/z"), scope=("docs:read",)))
    assert [(r.name, r.why) for r in ex.rules] == [
        ("no-one", "to [x]: the call is to y"),
        ("everyone", "the call is delegated; an allow rule without via or chain matches direct calls only"),
        ("chain", "matches: chain [bridge, **], scopes [docs:read]"),
    ]
    direct = e.explain(req("y", "/a.B/C"))
    assert direct.rules[1].why == "matches every direct call" and direct.rules[1].decides
    assert direct.rules[2].why == "chain [bridge, **]: the call is direct (chain matches delegated calls only)"


# ----------------------------------------------------------------------------- random rules and calls

NAMES = ("a", "b", "c")
IDS = tuple(f"spiffe://{TD}/agent/{n}" for n in NAMES)
METHODS = ("/p.S/Get", "/p.S/Put", "/q.T/Get")


def _subset(items: tuple[str, ...]) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(st.sampled_from(items), max_size=2, unique=True).map(tuple)


_rule = st.builds(
    lambda action, to, methods, from_, roles, principals, via, chain, scopes: dict(
        action=action, to=to, methods=methods, from_=from_, roles=roles, principals=principals, via=via,
        chain=chain, scopes=scopes),
    st.sampled_from(("allow", "deny")), _subset(NAMES), _subset(("/p.S/*", "/*/Get", "/q.T/Get", "*")),
    _subset((*NAMES, IDS[0])), _subset(("r1", "r2")), _subset(("p1", "p2")), _subset(NAMES),
    st.sampled_from(((), ("a", "**"), ("*",), ("**", "b"))), _subset(("s1", "s2")))

_request = st.builds(
    lambda to, method, peer, principal, roles, chain, scope: PolicyRequest(
        to=to, method=method, peer=IDS[peer], principal=principal, roles=roles,
        chain=(*chain, IDS[peer]) if chain is not None else (), scope=scope if chain is not None else ()),
    st.sampled_from(NAMES), st.sampled_from(METHODS), st.integers(0, 2), st.sampled_from(("p1", "p2", "p3")),
    _subset(("r1", "r2", "r3")), st.none() | st.lists(st.sampled_from(IDS), max_size=4).map(tuple),
    _subset(("s1", "s2")))


def _valid(name: str, spec: dict[str, Any]) -> PolicyRule | None:
    try:
        return PolicyRule(name, **spec)
    except ConfigError:  # a rule the config refuses (e.g. an allow rule with scopes but no via or chain)
        return None


@pytest.mark.parametrize("profile", PROFILES)
def test_explain_agrees_with_decide_on_random_rules(profile: Any) -> None:
    def check(case: tuple[list[dict[str, Any]], PolicyRequest]) -> None:
        specs, request = case
        rules = [rule for i, spec in enumerate(specs) if (rule := _valid(f"r{i}", spec)) is not None]
        engine = PolicyEngine(rules, TD, max_depth=3, cache_size=0)
        ex = engine.explain(request)
        decision = engine.decide(request)
        assert ex.decision == decision
        if len(request.chain) > 3:
            assert ex.rules == ()
            return
        deciding = [r for r in ex.rules if r.decides]
        assert [r.name for r in deciding] == ([decision.rule] if decision.rule is not None else [])
        assert all(r.matched for r in deciding)
        if deciding:
            assert (deciding[0].action == "allow") == decision.allowed
            first_match = next(r for r in ex.rules if r.matched)
            assert first_match is deciding[0]  # deny rules are listed first: the first match decides
        else:
            assert not decision.allowed and not any(r.matched for r in ex.rules)

    run(profile, st.tuples(st.lists(_rule, max_size=5), _request), check)
