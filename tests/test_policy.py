"""Decision tables for the policy engine: deny first, then allow, then default deny."""

from __future__ import annotations

from typing import Any

import pytest

from agentmesh.config import PolicyRule
from agentmesh.errors import ConfigError
from agentmesh.policy import PolicyEngine, PolicyRequest, compile_method_globs

TD = "example.org"
INVOKE = "/agentmesh.v1.Agent/Invoke"
DESCRIBE = "/agentmesh.v1.Agent/Describe"
OTHER = "/other.v1.Billing/Charge"


def sid(name: str, td: str = TD) -> str:
    return f"spiffe://{td}/agent/{name}"


RULES = (
    PolicyRule("no-outside-validator", "deny", to=("validator",), via=("bridge",)),
    PolicyRule("nobody-charges", "deny", methods=(OTHER,)),
    PolicyRule("client-starts-workflow", "allow", to=("ingestor",), methods=("/agentmesh.v1.Agent/*",),
               roles=("client",), via=("bridge",)),
    PolicyRule("ingestor-to-summarizer", "allow", to=("summarizer",), from_=("ingestor",),
               roles=("ingestor",)),
    PolicyRule("validator-by-id", "allow", to=("validator",), from_=(sid("summarizer"),)),
    PolicyRule("admins-describe", "allow", methods=("/*/Describe",), roles=("admin", "ops")),
    PolicyRule("alice-anything", "allow", to=("summarizer",), principals=("alice@example.org",)),
    PolicyRule("alice-via-bridge", "allow", to=("summarizer",), principals=("alice@example.org",),
               via=(sid("bridge"),)),
)


def req(to: str, method: str = INVOKE, peer: str = "ingestor", principal: str = "", roles: tuple[str, ...] = (),
        chain: tuple[str, ...] = ()) -> PolicyRequest:
    peer_id = peer if peer.startswith("spiffe://") else sid(peer)
    return PolicyRequest(to=to, method=method, peer=peer_id, principal=principal or peer_id, roles=roles,
                         chain=chain)


def delegated(to: str, method: str = INVOKE, peer: str = "bridge", principal: str = "user-1",
              roles: tuple[str, ...] = ("client",), depth: int = 1) -> PolicyRequest:
    peer_id = sid(peer)
    chain = (*(sid(f"hop{i}") for i in range(depth - 1)), peer_id)
    return PolicyRequest(to=to, method=method, peer=peer_id, principal=principal, roles=roles, chain=chain)


CASES = [
    # id, request, allowed, deciding rule
    ("default deny: unknown target", req("nowhere", roles=("ingestor",)), False, None),
    ("from by name + role", req("summarizer", roles=("ingestor",)), True, "ingestor-to-summarizer"),
    ("from by name, wrong role", req("summarizer", roles=("client",)), False, None),
    ("roles any-of (2nd role)", req("summarizer", roles=("other", "ingestor")), True, "ingestor-to-summarizer"),
    ("from by name, wrong peer", req("summarizer", peer="validator", roles=("ingestor",)), False, None),
    ("foreign trust domain, same name", req("summarizer", peer=sid("ingestor", "evil.org"), roles=("ingestor",)),
     False, None),
    ("from by SPIFFE ID", req("validator", peer="summarizer"), True, "validator-by-id"),
    ("from by SPIFFE ID, other td", req("validator", peer=sid("summarizer", "evil.org")), False, None),
    ("glob suffix", req("anyone", DESCRIBE, roles=("ops",)), True, "admins-describe"),
    ("glob suffix, no role", req("anyone", DESCRIBE, roles=("user",)), False, None),
    ("glob does not match other method", req("anyone", INVOKE, roles=("admin",)), False, None),
    ("principal exact", req("summarizer", peer="x", principal="alice@example.org"), True, "alice-anything"),
    ("principal mismatch", req("summarizer", peer="x", principal="alice@example.org.evil"), False, None),
    ("deny before allow: everyone denied", req("billing", OTHER, roles=("admin",)), False, "nobody-charges"),
    ("delegated via allowed", delegated("ingestor"), True, "client-starts-workflow"),
    ("delegated via allowed, glob", delegated("ingestor", DESCRIBE), True, "client-starts-workflow"),
    ("delegated wrong role", delegated("ingestor", roles=("guest",)), False, None),
    ("delegated via unlisted peer", delegated("ingestor", peer="summarizer"), False, None),
    ("direct call does not match via rule", req("ingestor", peer="bridge", roles=("client",)), False, None),
    ("delegated does not match direct-only rule", delegated("summarizer", peer="ingestor", roles=("ingestor",)),
     False, None),
    ("delegated principal via SPIFFE-ID via", delegated("summarizer", principal="alice@example.org", roles=()),
     True, "alice-via-bridge"),
    ("deny with via refuses delegation", delegated("validator"), False, "no-outside-validator"),
    ("deny with via ignores direct calls", req("validator", peer="summarizer"), True, "validator-by-id"),
    ("deny without via also refuses delegation", delegated("billing", OTHER), False, "nobody-charges"),
    ("depth at limit ok", delegated("ingestor", depth=4), True, "client-starts-workflow"),
    ("depth over limit", delegated("ingestor", depth=5), False, None),
]


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(RULES, TD, max_depth=4)


@pytest.mark.parametrize(("request_", "allowed", "rule"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decision_table(engine: PolicyEngine, request_: PolicyRequest, allowed: bool, rule: str | None) -> None:
    d = engine.decide(request_)
    assert (d.allowed, d.rule) == (allowed, rule), d.reason
    assert request_.method in d.reason


def test_default_deny_reason_names_roles_method_and_path(engine: PolicyEngine) -> None:
    d = engine.decide(delegated("validator", roles=("client",), peer="summarizer"))
    assert not d.allowed
    assert d.reason == f"no rule allows role(s) [client] to call {INVOKE} on validator via summarizer"
    d = engine.decide(req("nowhere", roles=("ingestor",)))
    assert d.reason == f"no rule allows role(s) [ingestor] from ingestor to call {INVOKE} on nowhere"


def test_depth_reason(engine: PolicyEngine) -> None:
    d = engine.decide(delegated("ingestor", depth=5))
    assert "delegation chain of 5 exceeds the maximum depth of 4" in d.reason


def test_empty_rules_deny_everything() -> None:
    d = PolicyEngine((), TD).decide(req("summarizer", roles=("ingestor",)))
    assert not d.allowed and d.rule is None


def test_star_allows_every_method() -> None:
    e = PolicyEngine((PolicyRule("all", "allow", methods=("*",)),), TD)
    assert e.decide(req("x", OTHER)).allowed


def test_memoized_decisions_are_stable_and_bounded() -> None:
    e = PolicyEngine(RULES, TD, cache_size=8)
    first = [e.decide(req(f"a{i}", roles=("ingestor",))) for i in range(20)]
    again = [e.decide(req(f"a{i}", roles=("ingestor",))) for i in range(20)]
    assert first == again
    assert len(e._cache) <= 8


@pytest.mark.parametrize(
    ("globs", "method", "match"),
    [
        (("/a.B/*",), "/a.B/C", True),
        (("/a.B/*",), "/a.BB/C", False),
        (("/a.*/Get",), "/a.v1.S/Get", True),
        (("/a.B/C",), "/a.B/Cx", False),
        (("/a.B/C", "/x.Y/*"), "/x.Y/Z", True),
        (("/a.B/C.",), "/a.B/Cx", False),  # '.' is literal
    ],
)
def test_method_globs(globs: tuple[str, ...], method: str, match: bool) -> None:
    rx = compile_method_globs(globs)
    assert rx is not None
    assert (rx.fullmatch(method) is not None) is match


@pytest.mark.parametrize(
    ("name", "fields", "message"),
    [
        ("bad-from", {"from_": ("Not A Name",)}, "from: invalid agent name 'Not A Name'"),
        ("bad-via", {"via": ("spiffe://example.org/../x",)}, "via: invalid SPIFFE ID path"),
        ("bad-method", {"methods": ("Invoke",)}, "methods: 'Invoke' must be a full gRPC method name"),
        ("bad-to", {"to": ("Not A Name",)}, "to: invalid agent name"),
        ("bad-action", {"action": "maybe"}, "action: expected one of allow, deny, got 'maybe'"),
    ],
)
def test_invalid_rules_are_refused_when_built(name: str, fields: dict[str, Any], message: str) -> None:
    """A rule checks itself (config built in code is checked as a file is); the engine only compiles."""
    with pytest.raises(ConfigError) as err:
        PolicyRule(name, **{"action": "allow", **fields})
    assert err.value.message.startswith(f"policy rule {name}: ") and message in err.value.message
