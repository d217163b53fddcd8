"""Checks across the sections of a mesh config: every name a rule mentions exists.

A misspelt agent, member, method or skill would make a rule never match, silently disabling the
control it expresses (a deny that denies nothing, a limit that limits nothing). :class:`MeshConfig`
calls :func:`check_references` itself, so configs built in code are checked as the file's are.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

from agentmesh.config import compile_method_globs, did_you_mean
from agentmesh.errors import ConfigError
from agentmesh.identity import SpiffeId
from agentmesh.metadata import REFLECTION_METHODS

if TYPE_CHECKING:
    from agentmesh.config import MeshConfig

__all__ = ["check_references"]


def check_references(cfg: MeshConfig) -> None:
    """Every name a rule mentions exists: a misspelt agent, member, method or skill would make the rule
    never match, silently disabling the control it expresses (a deny that denies nothing, a limit that
    limits nothing). Called by :class:`MeshConfig` itself, so configs built in code are checked too."""
    members = {*cfg.agents, cfg.bridge.name, cfg.control.name}
    for rule in cfg.policy:
        where = f"policy rule {rule.name}"
        _targets(f"{where}: to", rule.to, cfg)
        for key, items in (("from", rule.from_), ("via", rule.via), ("chain", rule.chain)):
            for item in items:
                if item not in ("*", "**"):
                    _member(f"{where}: {key}", item, members, cfg.trust_domain)
        _methods(f"{where}: methods", rule.methods, rule.to, cfg)
    _skills(cfg)
    for rr in cfg.rate_limits.rules:
        where = f"rate limit rule {rr.name}"
        _targets(f"{where}: match.to", rr.to, cfg)
        _methods(f"{where}: match.methods", rr.methods, rr.to, cfg)


def _nearest(value: str, valid: Iterable[str]) -> str:
    valid = sorted(valid)
    return did_you_mean(value, valid) or f" (known: {', '.join(valid) or 'none'})"


def _targets(where: str, names: tuple[str, ...], cfg: MeshConfig) -> None:
    """Rules are applied by the agents called (bridge and control decide no calls by rule)."""
    for name in names:
        if name not in cfg.agents:
            raise ConfigError(f"{where}: {name!r} is not an agent of this mesh{_nearest(name, cfg.agents)}")


def _member(where: str, item: str, members: set[str], trust_domain: str) -> None:
    """An agent, the bridge or the control plane, by name or SPIFFE ID; IDs of other trust domains pass."""
    name = item
    if item.startswith("spiffe://"):
        sid = SpiffeId.parse(item)
        if sid.trust_domain != trust_domain:
            return
        if sid.agent_name is None:
            raise ConfigError(f"{where}: {item!r} is not the SPIFFE ID of a member "
                              f"(members are spiffe://{trust_domain}/agent/<name>)")
        name = sid.agent_name
    if name not in members:
        raise ConfigError(f"{where}: {item!r} is not a member of this mesh{_nearest(name, members)}")


@functools.lru_cache(maxsize=64)
def _methods_of(descriptors: tuple[str, ...]) -> frozenset[str]:
    from agentmesh.runtime.descriptors import methods_of

    return frozenset(methods_of(descriptors))


def _methods(where: str, methods: tuple[str, ...], to: tuple[str, ...], cfg: MeshConfig) -> None:
    """Each method, or glob, names at least one method of the agents the rule applies to."""
    if not methods or "*" in methods:
        return
    targets = sorted(to or cfg.agents)
    known: set[str] = set()
    for name in targets:
        try:
            known |= _methods_of(tuple(cfg.agents[name].descriptors))
        except ConfigError as e:
            raise ConfigError(f"agents.{name}.{e.message}") from None
    of = ", ".join(targets) if to else "any agent"
    known.update(REFLECTION_METHODS)  # every member answers them
    for m in methods:
        if "*" in m:
            rx = compile_method_globs((m,))
            if rx is not None and not any(rx.fullmatch(k) for k in known):
                raise ConfigError(f"{where}: {m!r} matches no method of {of}{_nearest(m, known)}")
        elif m not in known:
            raise ConfigError(f"{where}: {m!r} is not a method of {of}{_nearest(m, known)}")


def _skills(cfg: MeshConfig) -> None:
    """A rule's ``skills`` must be skills of an A2A agent it can reach: a misspelt skill never matches."""
    declared: dict[str, set[str]] = {
        name: {s.get("id", "") for s in json.loads(a.a2a.card).get("skills", [])}
        | ({s.get("id", "") for s in json.loads(a.a2a.extended_card).get("skills", [])}
           if a.a2a.extended_card else set())
        for name, a in cfg.agents.items() if a.a2a is not None
    }
    for rule in cfg.policy:
        if not rule.skills:
            continue
        where = f"policy rule {rule.name}: skills"
        reach = [n for n in (rule.to or tuple(declared)) if n in declared]
        if not reach:
            raise ConfigError(f"{where}: no A2A agent (with an a2a: card) is among {list(rule.to) or 'the agents'}")
        known = set().union(*(declared[n] for n in reach))
        for skill in rule.skills:
            if skill not in known:
                raise ConfigError(f"{where}: {skill!r} is not a skill of {', '.join(reach)}"
                                  f"{did_you_mean(skill, known)} (their cards declare: "
                                  f"{', '.join(sorted(known)) or 'none'})")
