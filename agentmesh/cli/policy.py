"""``agentmesh policy check|explain``: what the mesh's policy decides for a call, and why.

Both take the call as the server chain sees it after authentication, and ask the same engine the
agents use (:class:`agentmesh.policy.PolicyEngine`, built from the config's ``policy`` as a member
builds it):

* ``--to AGENT --method M``: the agent called and its method (``Invoke``, ``Service/Method`` or a full
  ``/pkg.Service/Method``);
* a direct call: ``--from PEER`` (the mTLS peer; its principal is its SPIFFE ID and its roles those of
  ``agents.PEER.roles`` unless ``--principal`` / ``--roles`` say otherwise);
* a delegated call: ``--via PEER`` (the last hop, as in a rule's ``via``) or ``--chain A,B`` (the whole
  verified chain, oldest first; the last member is the peer), with the original caller's
  ``--principal`` and ``--roles``, and ``--scope`` for rules with ``scopes``;
* ``--skill S``: the A2A skill a SendMessage asks for.

``check`` prints the decision; ``explain`` prints every rule in evaluation order (deny rules first,
then allow rules in config order, else deny) with why it matched or not. Exit status: 0 allowed,
1 denied, 2 a usage or config error (as ``grep`` and ``kubectl auth can-i``).
"""

from __future__ import annotations

import argparse
from typing import Any

from agentmesh.cli.call import find_method
from agentmesh.cli.output import add_output, emit, table
from agentmesh.cli.usage import examples
from agentmesh.config import MeshConfig
from agentmesh.configfile import load_config
from agentmesh.errors import ConfigError
from agentmesh.policy import Explanation, PolicyEngine, PolicyRequest

__all__ = ["register"]

DENIED = 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("policy", help="ask what the policy decides for a call, and why", **examples(
        "agentmesh policy check --config mesh.yaml --from ingestor --to summarizer --method Invoke",
        "agentmesh policy explain --config mesh.yaml --via bridge --principal alice@example.org --roles client "
        "--to ingestor --method Invoke",
    ))
    s = p.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")
    check = s.add_parser("check", help="the decision for one call: allow (exit 0) or deny (exit 1)", **examples(
        "agentmesh policy check --config mesh.yaml --from ingestor --to summarizer --method Invoke",
        "agentmesh policy check --config mesh.yaml --via bridge --principal alice@example.org --roles client "
        "--to ingestor --method agentmesh.v1.Agent/Invoke -o json",
        "agentmesh policy check --config mesh.yaml --chain bridge,ingestor --principal alice@example.org "
        "--roles client --to summarizer --method Invoke",
    ))
    _call_arguments(check)
    check.set_defaults(func=_check)
    explain = s.add_parser("explain", help="every rule in evaluation order: matched or not, and why", **examples(
        "agentmesh policy explain --config mesh.yaml --via bridge --principal alice@example.org --roles client "
        "--to validator --method Invoke",
        "agentmesh policy explain --config mesh.yaml --from summarizer --to validator --method Invoke -o yaml",
    ))
    _call_arguments(explain)
    explain.set_defaults(func=_explain)


def _call_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="mesh config file")
    p.add_argument("--to", required=True, metavar="AGENT", help="the agent called")
    p.add_argument("--method", required=True, metavar="M", help="Method, Service/Method or /pkg.Service/Method")
    p.add_argument("--from", dest="from_", metavar="PEER", help="the mTLS peer (agent name or SPIFFE ID)")
    p.add_argument("--via", metavar="PEER", help="a delegated call whose last hop is PEER (a rule's via)")
    p.add_argument("--chain", metavar="A,B", help="a delegated call's whole chain, oldest first (the last is the peer)")
    p.add_argument("--principal", metavar="P", help="the principal (delegated: the original caller's token subject; "
                   "direct: default the peer's SPIFFE ID)")
    p.add_argument("--roles", action="append", default=[], metavar="R[,R]",
                   help="the principal's roles (direct: default agents.PEER.roles)")
    p.add_argument("--scope", action="append", default=[], metavar="S", help="a scope of the transaction")
    p.add_argument("--skill", metavar="S", help="the A2A skill the call asks for")
    add_output(p)


def _split(values: list[str]) -> tuple[str, ...]:
    return tuple(v.strip() for item in values for v in item.split(",") if v.strip())


def _member_id(config: MeshConfig, name: str, what: str) -> str:
    if name.startswith("spiffe://"):
        return name
    try:
        return str(config.spiffe_id(name))
    except ConfigError as e:
        raise ConfigError(f"{what}: {e.message}") from None


def _request(args: argparse.Namespace, config: MeshConfig) -> PolicyRequest:
    config.agent(args.to)
    method = args.method if args.method.startswith("/") and args.method.count("/") == 2 else \
        find_method(config, args.to, args.method).full_name
    chain = tuple(_member_id(config, n, "--chain") for n in _split([args.chain] if args.chain else []))
    if args.via and not chain:
        chain = (_member_id(config, args.via, "--via"),)
    if args.via and _member_id(config, args.via, "--via") != chain[-1]:
        raise ConfigError("--via names the last hop: it must be the last member of --chain")
    if chain:
        peer = chain[-1]
        if args.from_ and _member_id(config, args.from_, "--from") != peer:
            raise ConfigError("--from: in a delegated call the peer is the last hop (--via, or the end of --chain)")
        if not args.principal:
            raise ConfigError("--principal: required for a delegated call (the original caller's token subject)")
    elif args.from_:
        peer = _member_id(config, args.from_, "--from")
    else:
        raise ConfigError("say who calls: --from PEER (a direct call), or --via PEER / --chain A,B (delegated)")
    roles = _split(args.roles)
    if not roles and not chain and args.from_ in config.agents:
        roles = config.agents[args.from_].roles  # what the control plane puts in a member's token
    return PolicyRequest(to=args.to, method=method, peer=peer, principal=args.principal or peer, roles=roles,
                         chain=chain, scope=_split(args.scope), skill=args.skill)


def _engine(config: MeshConfig) -> PolicyEngine:
    return PolicyEngine(config.policy, config.trust_domain, max_depth=config.tokens.max_delegation_depth,
                        cache_size=0)


def _request_data(req: PolicyRequest) -> dict[str, Any]:
    return {"to": req.to, "method": req.method, "peer": req.peer, "principal": req.principal,
            "roles": list(req.roles), "chain": list(req.chain), "scope": list(req.scope), "skill": req.skill}


def _check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    req = _request(args, config)
    d = _engine(config).decide(req)
    word = "allow" if d.allowed else "deny"
    emit(args.output, {"allowed": d.allowed, "decision": word, "rule": d.rule, "reason": d.reason,
                       "request": _request_data(req)},
         lambda: [f"{word}: {d.reason}"])
    return 0 if d.allowed else DENIED


def _explain(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    req = _request(args, config)
    ex = _engine(config).explain(req)
    d = ex.decision
    emit(args.output, {"allowed": d.allowed, "decision": "allow" if d.allowed else "deny", "rule": d.rule,
                       "reason": d.reason, "request": _request_data(req),
                       "rules": [{"name": r.name, "action": r.action, "matched": r.matched, "decides": r.decides,
                                  "why": r.why} for r in ex.rules]},
         lambda: _explain_lines(ex, req, config))
    return 0 if d.allowed else DENIED


def _explain_lines(ex: Explanation, req: PolicyRequest, config: MeshConfig) -> list[str]:
    prefix = f"spiffe://{config.trust_domain}/agent/"

    def short(sid: str) -> str:
        return sid.removeprefix(prefix) if sid.startswith(prefix) and "/" not in sid[len(prefix):] else sid

    how = f"delegated, chain [{', '.join(map(short, req.chain))}]" if req.chain else f"direct from {short(req.peer)}"
    extra = "".join([f", scope [{', '.join(req.scope)}]" if req.scope else "",
                     f", skill {req.skill}" if req.skill else ""])
    lines = [f"call: {req.principal} (roles [{', '.join(req.roles)}]) -> {req.to} {req.method}, {how}{extra}",
             "order: deny rules, then allow rules in config order; no match: deny", ""]
    if ex.rules:
        rows = [("#", "ACTION", "RULE", "RESULT", "WHY")]
        for i, r in enumerate(ex.rules, start=1):
            result = "DECIDES" if r.decides else ("matches (after the decision)" if r.matched else "no match")
            rows.append((str(i), r.action, r.name, result, r.why))
        lines += [*table(rows), ""]
    elif not config.policy:
        lines += ["(the config has no policy rules)", ""]
    d = ex.decision
    lines.append(f"decision: {'allow' if d.allowed else 'deny'}: {d.reason}")
    return lines
