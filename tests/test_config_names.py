"""Every name a rule mentions exists, or the config does not load (issue 13 item 3).

A rule that can never match silently disables the control it expresses: a deny that denies nothing,
a rate limit that limits nothing. Each case below loaded without error before, and is now one line
naming the key and, where one is near, the valid value meant. Configs built in code are checked the
same way, because the frozen dataclasses check themselves.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from agentmesh.config import (
    AgentConfig,
    MeshConfig,
    PolicyRule,
    RateLimitConfig,
    RateRule,
    TokensConfig,
)
from agentmesh.configfile import load_config, parse_config
from agentmesh.errors import ConfigError

TD = "example.org"
INVOKE = "/agentmesh.v1.Agent/Invoke"
AGENTS = {name: {"address": f"127.0.0.1:{7101 + i}"} for i, name in enumerate(("ingestor", "summarizer"))}


def mesh(**sections: Any) -> dict[str, Any]:
    return {"trust_domain": TD, "agents": AGENTS, **sections}


def policy(**rule: Any) -> dict[str, Any]:
    return mesh(policy=[{"name": "r", **rule}])


def limit(**match: Any) -> dict[str, Any]:
    return mesh(rate_limits={"rules": [{"name": "l", "match": match, "rate": "5/s"}]})


def refused(doc: Any, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(doc, tmp_path)
    message = err.value.message
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("doc", "message"), [
    # the reproductions
    pytest.param(limit(methods=["Invoke"]), "rate limit rule l: match.methods: 'Invoke' must be a full gRPC method "
                 "name like /pkg.Service/Method", id="rate limit: short method name"),
    pytest.param(limit(to=["no-such-agent"]), "rate limit rule l: match.to: 'no-such-agent' is not an agent of this "
                 "mesh (known: ingestor, summarizer)", id="rate limit: unknown agent"),
    pytest.param(policy(action="deny", to=["ingestr"]), "policy rule r: to: 'ingestr' is not an agent of this mesh "
                 "(did you mean 'ingestor'?)", id="policy: to typo"),
    # rate limits
    pytest.param(limit(to=["sumarizer"]), "match.to: 'sumarizer' is not an agent of this mesh (did you mean "
                 "'summarizer'?)", id="rate limit: to typo"),
    pytest.param(limit(methods=["/agentmesh.v1.Agent/Invoek"]), "rate limit rule l: match.methods: "
                 f"'/agentmesh.v1.Agent/Invoek' is not a method of any agent (did you mean '{INVOKE}'?)",
                 id="rate limit: method typo"),
    pytest.param(limit(methods=["/agentmesh.v1.Agnet/*"]), "rate limit rule l: match.methods: "
                 "'/agentmesh.v1.Agnet/*' matches no method of any agent", id="rate limit: glob matching nothing"),
    pytest.param(limit(to=["bridge"]), "match.to: 'bridge' is not an agent of this mesh",
                 id="rate limit: the bridge is limited by no rule"),
    # policy: names of agents and members
    pytest.param(policy(**{"from": ["sumarizer"]}), "policy rule r: from: 'sumarizer' is not a member "
                 "of this mesh (did you mean 'summarizer'?)", id="policy: from typo"),
    pytest.param(policy(via=["brigde"]), "policy rule r: via: 'brigde' is not a member of this mesh (did you mean "
                 "'bridge'?)", id="policy: via typo"),
    pytest.param(policy(chain=["bridge", "ingester", "**"]), "policy rule r: chain: 'ingester' is not a member of "
                 "this mesh (did you mean 'ingestor'?)", id="policy: chain typo"),
    pytest.param(policy(via=[f"spiffe://{TD}/agent/brige"]), f"policy rule r: via: 'spiffe://{TD}/agent/brige' is "
                 "not a member of this mesh (did you mean 'bridge'?)", id="policy: SPIFFE ID of no member"),
    pytest.param(policy(**{"from": [f"spiffe://{TD}/workload/x"]}), "is not the SPIFFE ID of a member",
                 id="policy: SPIFFE ID of this trust domain that no member has"),
    pytest.param(policy(to=["bridge"]), "policy rule r: to: 'bridge' is not an agent of this mesh",
                 id="policy: to the bridge (it decides no call by rule)"),
    # policy: methods
    pytest.param(policy(methods=["/agentmesh.v1.Agent/invoke"]), "policy rule r: methods: "
                 f"'/agentmesh.v1.Agent/invoke' is not a method of any agent (did you mean '{INVOKE}'?)",
                 id="policy: method case"),
    pytest.param(policy(to=["ingestor"], methods=["/other.v1.Billing/*"]), "policy rule r: methods: "
                 "'/other.v1.Billing/*' matches no method of ingestor", id="policy: glob matching nothing"),
    pytest.param(policy(methods=["Invoke"]), "policy rule r: methods: 'Invoke' must be a full gRPC method name",
                 id="policy: short method name"),
])
def test_a_rule_that_can_never_match_fails_config_load(tmp_path: Path, doc: dict[str, Any], message: str) -> None:
    assert message in refused(doc, tmp_path)


@pytest.mark.parametrize("doc", [
    pytest.param(limit(to=["ingestor"], methods=[INVOKE, "/agentmesh.v1.Agent/*"]), id="rate limit: real names"),
    pytest.param(limit(methods=["*"]), id="rate limit: every method"),
    pytest.param(policy(to=["summarizer"], methods=["/*/Invoke"]), id="policy: glob matching a method"),
    pytest.param(policy(via=["bridge"], chain=["bridge", "*", "**"]), id="policy: bridge and wildcards"),
    pytest.param(policy(**{"from": ["control", f"spiffe://{TD}/agent/ingestor"]}), id="policy: members by name and ID"),
    pytest.param(policy(**{"from": ["spiffe://partner.org/agent/anyone"]}, chain=["spiffe://partner.org/x", "**"]),
                 id="policy: SPIFFE IDs of other trust domains"),
    pytest.param(mesh(bridge={"name": "edge"}, policy=[{"name": "r", "via": ["edge"]}]), id="policy: a renamed bridge"),
])
def test_rules_naming_what_exists_load(tmp_path: Path, doc: dict[str, Any]) -> None:
    parse_config(doc, tmp_path)


def test_yaml_errors_give_line_column_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text("trust_domain: example.org\nagents:\n  ingestor:\n    address: 127.0.0.1:7101\n"
                    "    roles: [ingestor\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.message == (f"{path}: invalid YAML at line 6, column 1: expected ',' or ']', but got "
                                 "'<stream end>' (while parsing a flow sequence that starts at line 5, column 12)")
    path.write_text("trust_domain: example.org\n  agents: {}\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line 2, column 9: mapping values are not allowed here$"):
        load_config(path)


@pytest.mark.parametrize(("doc", "message"), [
    pytest.param(mesh(agents={"ingestor": {"adress": "127.0.0.1:7101"}}),
                 "agents.ingestor.adress: unknown key (did you mean 'address'?)", id="misspelt required key"),
    pytest.param({"trust_domian": TD, "agents": AGENTS}, "trust_domian: unknown key (did you mean 'trust_domain'?)",
                 id="misspelt trust_domain"),
    pytest.param(mesh(tokens={"issuers": [{"isss": "https://idp", "jwks_url": "https://idp/jwks"}]}),
                 "tokens.issuers[0].isss: unknown key (did you mean 'iss'?)", id="misspelt iss"),
    pytest.param(mesh(rate_limits={"rules": [{"rte": "5/s"}]}),
                 "rate_limits.rules[0].rte: unknown key (did you mean 'rate'?)", id="misspelt rate"),
    pytest.param(mesh(tokens={"tll": "5m"}), "tokens.tll: unknown key (did you mean 'ttl'?)", id="misspelt option"),
    pytest.param(mesh(policy=[{"name": "r", "method": [INVOKE]}]),
                 "policy[0].method: unknown key (did you mean 'methods'?)", id="misspelt rule key"),
    pytest.param(mesh(rate_limits={"rules": [{"rate": "5/s", "match": {"role": ["client"]}}]}),
                 "rate_limits.rules[0].match.role: unknown key (did you mean 'roles'?)", id="misspelt match key"),
    pytest.param(mesh(colour="red"), "colour: unknown key", id="nothing near"),
])
def test_unknown_keys_name_the_misspelling_and_the_key_meant(tmp_path: Path, doc: dict[str, Any],
                                                             message: str) -> None:
    assert refused(doc, tmp_path) == message


# ---------------------------------------------------------------------------- configs built in code


def code_built(**changes: Any) -> MeshConfig:
    agents = {n: AgentConfig(n, a["address"], Path("/nonexistent") / n) for n, a in AGENTS.items()}
    fields: dict[str, Any] = {"trust_domain": TD, "ca_dir": Path("/nonexistent/ca"),
                              "identities_dir": Path("/nonexistent/ids"), "agents": agents,
                              "tokens": TokensConfig(issuer=f"spiffe://{TD}"), **changes}
    return MeshConfig(**fields)


def test_configs_built_in_code_get_the_same_checks() -> None:
    assert code_built(policy=(PolicyRule("r", "allow", to=("ingestor",), methods=(INVOKE,)),)).policy
    with pytest.raises(ConfigError, match=r"^policy rule r: to: 'ingestr' is not an agent .*'ingestor'"):
        code_built(policy=(PolicyRule("r", "deny", to=("ingestr",)),))
    with pytest.raises(ConfigError, match=r"^rate limit rule l: match\.to: 'nobody' is not an agent"):
        code_built(rate_limits=RateLimitConfig(rules=(RateRule("l", 1.0, 1, to=("nobody",)),)))
    with pytest.raises(ConfigError, match=r"^policy: rule names must be unique \('r' is used 2 times\)"):
        code_built(policy=(PolicyRule("r", "allow"), PolicyRule("r", "deny")))
    good = code_built()
    with pytest.raises(ConfigError, match=r"^policy rule r: via: 'brige' is not a member"):
        dataclasses.replace(good, policy=(PolicyRule("r", "allow", via=("brige",)),))
    with pytest.raises(ConfigError, match=r"^trust_domain: invalid trust domain"):
        dataclasses.replace(good, trust_domain="Example.org")


@pytest.mark.parametrize(("build", "message"), [
    pytest.param(lambda: RateRule("zero-rate", rate=0.0, burst=1), "rate limit rule zero-rate: rate: must be a "
                 "positive number", id="zero rate"),
    pytest.param(lambda: RateRule("inf", rate=float("inf"), burst=1), "rate: must be a positive number", id="inf"),
    pytest.param(lambda: RateRule("zero-burst", rate=1.0, burst=0), "rate limit rule zero-burst: burst: must be an "
                 "integer >= 1", id="zero burst"),
    pytest.param(lambda: RateRule("short", 1.0, 1, methods=("Invoke",)), "match.methods: 'Invoke' must be a full",
                 id="short method"),
    pytest.param(lambda: RateLimitConfig(rules=(RateRule("a", 1.0, 1), RateRule("a", 2.0, 2))),
                 "rate_limits.rules: duplicate rule name 'a'", id="duplicate names"),
    pytest.param(lambda: RateLimitConfig(backend="memcached://x"), "rate_limits.backend", id="backend"),
    pytest.param(lambda: AgentConfig("a", "nohost", Path("/x")), "agents.a.address: expected host:port",
                 id="agent address"),
    pytest.param(lambda: AgentConfig("A_b", "127.0.0.1:1", Path("/x")), "agents.A_b: invalid agent name",
                 id="agent name"),
    pytest.param(lambda: TokensConfig(issuer="x", algorithms=("none",)), "tokens.algorithms: 'none' is never "
                 "accepted", id="alg none"),
    pytest.param(lambda: PolicyRule("orphan", "allow", scopes=("x",)), "policy rule orphan: scopes: only delegated",
                 id="scopes without delegation"),
])
def test_sections_check_themselves(build: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build()
    assert message in err.value.message


def test_the_skill_check_suggests_the_skill_meant(tmp_path: Path) -> None:
    card = Path(__file__).parents[1] / "examples" / "a2a" / "card.json"
    doc = {"trust_domain": TD, "agents": {"travel": {"address": "127.0.0.1:7101", "app": "examples.a2a.travel:executor",
                                                     "a2a": {"card": str(card)}}},
           "policy": [{"name": "r", "to": ["travel"], "skills": ["plan-trips"]}]}
    pytest.importorskip("a2a")
    assert "policy rule r: skills: 'plan-trips' is not a skill of travel (did you mean 'plan-trip'?)" \
        in refused(doc, tmp_path)
