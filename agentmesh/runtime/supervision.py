"""What ``agentmesh up`` decides, without processes: when to restart a crashed child and when to give up,
and in which order to stop the members (pure: times and the config in, decisions out).

Restarts: a child that exits unasked is restarted after ``first_delay`` seconds, doubled for each
earlier crash still inside ``window`` (up to ``max_delay``); the ``max_crashes``-th crash within
``window`` gives up (the mesh stops, ``up`` exits non-zero). A child that stays up for ``window``
starts again from the first delay.

Metrics: each member serves its Prometheus endpoint where the config's ``metrics`` section says; a config
that names no address gets one free port on ``metrics.host`` per member (:func:`metrics_addresses`).

Stop order: the bridge first, then the agents from the edge inward, the control plane last. "Inward"
follows who may call whom, read from the policy: policy is default deny, so its allow rules are the
whole call graph (``via`` / ``from`` / the last member of a ``chain`` name the caller; a rule that names
none is satisfied by any member holding its ``roles``, so each such member counts as a caller). An agent
is stopped once no running agent may still call it, so every call it is draining can still reach the
agents it calls. Agents no running agent calls stop together (one wave). In a cycle, where no order
keeps every call whole, the agent listed first in the config goes first: mesh files list a pipeline
from its entry (``examples/workflow/mesh.yaml``), so that is the best guess the file itself offers.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from agentmesh.config import MeshConfig, PolicyRule
from agentmesh.errors import ConfigError

__all__ = ["CrashHistory", "RestartPolicy", "callers_of", "listen_ports", "metrics_addresses", "stop_waves"]


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    max_crashes: int = 5  # crashes within ``window`` that make ``up`` give up
    window: float = 60.0  # seconds
    first_delay: float = 0.5  # before the first restart, doubled for each recent crash
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.max_crashes, bool) or not isinstance(self.max_crashes, int) or self.max_crashes < 1:
            raise ConfigError(f"--max-crashes: expected an integer >= 1, got {self.max_crashes!r}")
        for name in ("window", "first_delay", "max_delay"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"restart {name.replace('_', ' ')}: expected seconds >= 0, got {value!r}")
        if self.window <= 0:
            raise ConfigError(f"--crash-window: expected seconds > 0, got {self.window!r}")


class CrashHistory:
    """One child's recent crashes and the decision after each."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._times: deque[float] = deque()

    def crashed(self, now: float) -> float | None:
        """Records a crash at ``now``: the delay before restarting, or None to give up."""
        while self._times and self._times[0] <= now - self.policy.window:
            self._times.popleft()
        self._times.append(now)
        if len(self._times) >= self.policy.max_crashes:
            return None
        return min(self.policy.max_delay, self.policy.first_delay * 2.0 ** (len(self._times) - 1))

    @property
    def recent(self) -> int:
        """Crashes counted in the window (as of the last one)."""
        return len(self._times)


def metrics_addresses(config: MeshConfig, names: Sequence[str], *, auto: bool = True) -> dict[str, str | None]:
    """Where each member of ``names`` serves its metrics: the addresses of the config's ``metrics`` section
    when it names any (None: that member serves none); else, with ``auto``, any free port on
    ``metrics.host`` (``host:0``) for each; else nowhere."""
    configured = {n: config.metrics_address(n) for n in names}
    if not auto or any(a is not None for a in configured.values()):
        return configured
    return {n: f"{config.metrics.host}:0" for n in names}


def listen_ports(config: MeshConfig) -> set[int]:
    """The ports the config's members serve on (a free port picked for metrics must not be one of them: the
    member that is to listen there may not have started yet)."""
    addresses = [config.control.bind_address, config.control.join_bind_address, config.bridge.listen,
                 *(a.bind_address for a in config.agents.values()),
                 *(config.metrics_address(n) for n in config.members())]
    return {int(port) for a in addresses if a and (port := a.rpartition(":")[2]).isdigit() and int(port)}


def _member(peer: str) -> str:
    """An agent name from a ``from`` / ``via`` / ``chain`` entry (a name or a SPIFFE ID)."""
    return peer.rsplit("/agent/", 1)[1] if peer.startswith("spiffe://") and "/agent/" in peer else peer


def _rule_callers(rule: PolicyRule, config: MeshConfig) -> set[str]:
    agents = set(config.agents)
    if rule.via:
        return {_member(p) for p in rule.via} & agents
    if rule.chain:
        last = rule.chain[-1]
        return set(agents) if last in ("*", "**") else {_member(last)} & agents
    if rule.from_:
        return {_member(p) for p in rule.from_} & agents
    if rule.roles:
        return {n for n, a in config.agents.items() if set(a.roles) & set(rule.roles)}
    return set(agents)


def callers_of(config: MeshConfig) -> dict[str, set[str]]:
    """For each agent, the other agents the policy allows to call it."""
    out: dict[str, set[str]] = {name: set() for name in config.agents}
    for rule in config.policy:
        if rule.action != "allow":
            continue
        callees = set(rule.to) & set(config.agents) if rule.to else set(config.agents)
        callers = _rule_callers(rule, config)
        for callee in callees:
            out[callee] |= callers - {callee}
    return out


def stop_waves(config: MeshConfig) -> list[list[str]]:
    """The agents in stopping order: each wave once no agent of a later wave may call it."""
    callers = callers_of(config)
    remaining = list(config.agents)  # config order, for the cycle rule
    waves: list[list[str]] = []
    while remaining:
        wave = [a for a in remaining if not callers[a] & set(remaining)]
        if not wave:  # a cycle: the one listed first goes first
            wave = [remaining[0]]
        waves.append(wave)
        remaining = [a for a in remaining if a not in wave]
    return waves
