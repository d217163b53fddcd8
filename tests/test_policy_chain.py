"""Decision table for the delegation fields of policy rules: ``chain`` (the whole verified chain, oldest first;
``*`` = exactly one member, ``**`` = any number) and ``scopes`` (all must be in the transaction's scope), and
the rule that an allow rule without ``via`` or ``chain`` matches direct calls only."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentmesh.config import PolicyRule
from agentmesh.configfile import parse_config
from agentmesh.errors import ConfigError
from agentmesh.policy import PolicyEngine, PolicyRequest

TD = "example.org"
INVOKE = "/agentmesh.v1.Agent/Invoke"


def sid(name: str, td: str = TD) -> str:
    return name if name.startswith("spiffe://") else f"spiffe://{td}/agent/{name}"


RULES = (
    PolicyRule("no-bridge-to-vault", "deny", to=("vault",), chain=("bridge", "**")),
    PolicyRule("vault-via-ingestor", "allow", to=("vault",), via=("ingestor",)),
    PolicyRule("vault-direct", "allow", to=("vault",), from_=("ingestor",)),
    PolicyRule("bridge-then-ingestor", "allow", to=("summarizer",), chain=("bridge", "ingestor")),
    PolicyRule("anything-from-bridge", "allow", to=("reporter",), chain=("bridge", "**")),
    PolicyRule("one-then-summarizer", "allow", to=("validator",), chain=("*", "summarizer")),
    PolicyRule("ledger-writers", "allow", to=("ledger",), chain=("**",), scopes=("ledger:write", "ledger:read")),
    PolicyRule("by-spiffe-id", "allow", to=("auditor",), chain=(sid("bridge"), "*", "**")),
    PolicyRule("via-and-chain", "allow", to=("archive",), via=("summarizer",), chain=("bridge", "**")),
    PolicyRule("store-direct", "allow", to=("store",), from_=("ingestor",)),
    PolicyRule("admins-anywhere", "allow", to=("console",), roles=("admin",), chain=("**",)),
)


def direct(to: str, peer: str = "ingestor", roles: tuple[str, ...] = ("ingestor",)) -> PolicyRequest:
    return PolicyRequest(to=to, method=INVOKE, peer=sid(peer), principal=sid(peer), roles=roles)


def delegated(to: str, *chain: str, scope: tuple[str, ...] = (), roles: tuple[str, ...] = ("client",),
              principal: str = "alice") -> PolicyRequest:
    """A delegated call: the mTLS peer is the chain's last member."""
    ids = tuple(sid(c) for c in chain)
    return PolicyRequest(to=to, method=INVOKE, peer=ids[-1], principal=principal, roles=roles, chain=ids,
                         scope=scope)


CASES = [
    # chain: an exact sequence
    ("exact chain", delegated("summarizer", "bridge", "ingestor"), True, "bridge-then-ingestor"),
    ("exact chain, extra hop in the middle", delegated("summarizer", "bridge", "x", "ingestor"), False, None),
    ("exact chain, extra hop before", delegated("summarizer", "x", "bridge", "ingestor"), False, None),
    ("exact chain, first hop missing", delegated("summarizer", "ingestor"), False, None),
    ("exact chain, reordered", delegated("summarizer", "ingestor", "bridge"), False, None),
    ("exact chain, name prefix", delegated("summarizer", "bridge2", "ingestor"), False, None),
    ("exact chain, longer name", delegated("summarizer", "bridge-evil", "ingestor"), False, None),
    ("exact chain, same name in another trust domain",
     delegated("summarizer", sid("bridge", "evil.org"), "ingestor"), False, None),
    ("chain rule never matches a direct call", direct("summarizer"), False, None),
    # chain: "**" = any number
    ("** after bridge: bridge alone", delegated("reporter", "bridge"), True, "anything-from-bridge"),
    ("** after bridge: three more", delegated("reporter", "bridge", "a", "b", "c"), True, "anything-from-bridge"),
    ("** after bridge: bridge not first", delegated("reporter", "a", "bridge"), False, None),
    ("** after bridge: direct call from the bridge", direct("reporter", "bridge"), False, None),
    # chain: "*" = exactly one
    ("* then summarizer: one before", delegated("validator", "x", "summarizer"), True, "one-then-summarizer"),
    ("* then summarizer: none before", delegated("validator", "summarizer"), False, None),
    ("* then summarizer: two before", delegated("validator", "x", "y", "summarizer"), False, None),
    ("* then summarizer: summarizer not last", delegated("validator", "x", "summarizer", "y"), False, None),
    # chain by SPIFFE ID, "*" and "**" together: at least one after the bridge
    ("SPIFFE ID, *, **: one after", delegated("auditor", "bridge", "x"), True, "by-spiffe-id"),
    ("SPIFFE ID, *, **: three after", delegated("auditor", "bridge", "x", "y", "z"), True, "by-spiffe-id"),
    ("SPIFFE ID, *, **: none after", delegated("auditor", "bridge"), False, None),
    # scopes: every one must be granted
    ("scopes: all granted, and more", delegated("ledger", "a", scope=("ledger:read", "other", "ledger:write")),
     True, "ledger-writers"),
    ("scopes: one missing", delegated("ledger", "a", scope=("ledger:read",)), False, None),
    ("scopes: none", delegated("ledger", "a"), False, None),
    ("scopes: a prefix is not the scope", delegated("ledger", "a", scope=("ledger:read", "ledger:writer")),
     False, None),
    ("scopes: a direct call has none", direct("ledger"), False, None),
    ("scopes alone, delegated: no via/chain, direct only", delegated("orphan", "a", scope=("x",)), False, None),
    ("scopes alone, direct: no scope", direct("orphan"), False, None),
    # roles are the principal's
    ("chain + roles: the principal is an admin", delegated("console", "a", roles=("admin",)), True,
     "admins-anywhere"),
    ("chain + roles: a hop's role does not count", delegated("console", "a", roles=("client",)), False, None),
    # via and chain together: both must match
    ("via + chain: both", delegated("archive", "bridge", "summarizer"), True, "via-and-chain"),
    ("via + chain: other peer", delegated("archive", "bridge", "ingestor"), False, None),
    ("via + chain: other chain", delegated("archive", "cron", "summarizer"), False, None),
    # an allow rule without via or chain matches direct calls only
    ("direct-only rule, direct call", direct("store"), True, "store-direct"),
    ("direct-only rule, delegated through the same peer", delegated("store", "bridge", "ingestor"), False, None),
    ("direct-only rule, 1-hop delegation by the peer itself", delegated("store", "ingestor"), False, None),
    # a deny rule with chain: delegated calls with that chain only
    ("deny with chain: denies the chain", delegated("vault", "bridge", "ingestor"), False, "no-bridge-to-vault"),
    ("deny with chain: another chain is allowed", delegated("vault", "cron", "ingestor"), True, "vault-via-ingestor"),
    ("deny with chain: direct calls not concerned", direct("vault"), True, "vault-direct"),
]


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(RULES, TD, max_depth=6)


@pytest.mark.parametrize(("request_", "allowed", "rule"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_chain_and_scopes(engine: PolicyEngine, request_: PolicyRequest, allowed: bool, rule: str | None) -> None:
    d = engine.decide(request_)
    assert (d.allowed, d.rule) == (allowed, rule), d.reason


def test_depth_limit_comes_before_any_rule() -> None:
    e = PolicyEngine(RULES, TD, max_depth=3)
    assert e.decide(delegated("reporter", "bridge", "a", "b")).allowed
    d = e.decide(delegated("reporter", "bridge", "a", "b", "c"))
    assert not d.allowed and d.rule is None and "exceeds the maximum depth of 3" in d.reason


@pytest.mark.parametrize(("chain", "ok"), [
    pytest.param(("bridge", "*", "**"), True, id="names and wildcards"),
    pytest.param((sid("bridge"), "**"), True, id="SPIFFE ID"),
    pytest.param(("spiffe://other.org/agent/bridge",), True, id="SPIFFE ID of another trust domain"),
    pytest.param(("Not A Name",), False, id="not an agent name"),
    pytest.param(("bridge*",), False, id="glob inside a name"),
    pytest.param(("***",), False, id="three stars"),
    pytest.param(("",), False, id="empty entry"),
    pytest.param(("spiffe://example.org/../x",), False, id="bad SPIFFE ID"),
    pytest.param(("localhost",), False, id="reserved name"),
])
def test_chain_entries_are_checked(chain: tuple[str, ...], ok: bool) -> None:
    """The rule checks its entries when it is built (config.PolicyRule); the engine only compiles them."""
    if ok:
        PolicyEngine((PolicyRule("chained", "allow", chain=chain),), TD)
    else:
        with pytest.raises(ConfigError, match=r"^policy rule chained: chain: ") as err:
            PolicyRule("chained", "allow", chain=chain)
        assert "\n" not in err.value.message


def test_chain_and_scopes_from_the_config_file(tmp_path: Path) -> None:
    doc = {"trust_domain": TD, "agents": {"a": {"address": "127.0.0.1:7000"}},
           "policy": [{"name": "r", "to": ["a"], "chain": ["bridge", "**"], "scopes": ["read"]},
                      {"name": "bad", "to": ["a"], "chain": ["Bridge!"]}]}
    with pytest.raises(ConfigError, match="policy rule bad: chain: invalid agent name 'Bridge!'"):
        parse_config(doc, tmp_path)  # refused at load, not when an agent starts
    cfg = parse_config({**doc, "policy": doc["policy"][:1]}, tmp_path)
    assert (cfg.policy[0].chain, cfg.policy[0].scopes) == (("bridge", "**"), ("read",))
    good = PolicyEngine(cfg.policy, cfg.trust_domain)
    assert good.decide(delegated("a", "bridge", "x", scope=("read",))).allowed
    assert not good.decide(delegated("a", "bridge", "x")).allowed


def test_an_allow_rule_with_scopes_but_no_delegation_can_never_match_and_is_refused() -> None:
    """Only delegated calls carry a scope, and an allow rule without via or chain matches direct calls only:
    such a rule would silently allow nothing, so it is a one-line config error; with via it loads."""
    with pytest.raises(ConfigError, match=r"^policy rule orphan: scopes: only delegated calls carry a scope") as err:
        PolicyEngine((PolicyRule("orphan", "allow", to=("a",), scopes=("x",)),), TD)
    assert "\n" not in err.value.message
    engine = PolicyEngine((PolicyRule("ok", "allow", to=("a",), scopes=("x",), via=("bridge",)),), TD)
    assert engine.decide(delegated("a", "bridge", scope=("x",))).allowed
    assert not engine.decide(delegated("a", "bridge")).allowed
