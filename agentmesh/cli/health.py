"""``agentmesh health NAME --config FILE``: is one member serving? An exec probe for kubelet.

kubelet's own gRPC probe speaks no TLS and every member's port needs mutual TLS, so a pod probes
itself with this command: exit 0 when the member answers, non-zero with one line saying why not.
The check is the one ``agentmesh status`` makes (:mod:`agentmesh.cli.status`): gRPC health over
mutual TLS for the control plane and agents (the server's certificate must name NAME), ``/readyz``
over HTTPS for the bridge.

By default the probe runs beside the member, as the member: it presents NAME's own identity (the
only one its pod holds) and dials where NAME listens (``listen``; a wildcard host such as 0.0.0.0
becomes the loopback address). ``--address`` and ``--as`` change either.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from agentmesh.cli.status import MemberStatus, _bridge, _grpc_health
from agentmesh.cli.usage import examples
from agentmesh.config import MeshConfig, did_you_mean, host_port
from agentmesh.configfile import load_config
from agentmesh.errors import ConfigError, Unavailable
from agentmesh.runtime.credentials import AgentIdentity

__all__ = ["local_address", "probe", "register"]

_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]", "[::]": "[::1]"}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("health", help="exit 0 when a member answers health over mTLS (a kubelet exec probe)",
                       description="Asks one member whether it is serving, as 'agentmesh status' does: gRPC health\n"
                                   "over mutual TLS (control plane, agents) or /readyz over HTTPS (bridge).\n"
                                   "Exit status 0: serving; 2: not serving, unreachable, or a bad argument (one\n"
                                   "line says which).",
                       **examples("agentmesh health summarizer --config /etc/agentmesh/mesh.yaml",
                                  "agentmesh health control --config mesh.yaml --address control.agents:7100",
                                  "agentmesh health ingestor --config mesh.yaml --as control --timeout 1"))
    p.add_argument("name", help="the member: the control plane, an agent or the bridge")
    p.add_argument("--config", type=Path, default=Path("mesh.yaml"), help="mesh config file (default: mesh.yaml)")
    p.add_argument("--as", dest="as_member", metavar="NAME",
                   help="the member whose identity asks (default: NAME itself)")
    p.add_argument("--address", metavar="HOST:PORT",
                   help="where to ask (default: where NAME listens, a wildcard host as loopback)")
    p.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS", help="(default 2)")
    p.set_defaults(func=_run)


def local_address(address: str) -> str:
    """``address`` as dialled from the same host: a wildcard host (0.0.0.0, ::) becomes the loopback."""
    host, _, port = address.rpartition(":")
    return f"{_WILDCARDS.get(host, host)}:{port}"


def _member(config: MeshConfig, name: str, address: str | None) -> MemberStatus:
    if name == config.bridge.name:
        return MemberStatus(name, "bridge", address or local_address(config.bridge.listen))
    if name == config.control.name:
        return MemberStatus(name, "control", address or local_address(config.control.bind_address))
    if name in config.agents:
        return MemberStatus(name, "agent", address or local_address(config.agents[name].bind_address))
    members = config.members()
    raise ConfigError(f"unknown member {name!r}{did_you_mean(name, members) or ' (' + ', '.join(members) + ')'}")


async def probe(config: MeshConfig, name: str, *, prober: str | None = None, address: str | None = None,
                timeout: float = 2.0) -> MemberStatus:
    """Member ``name``'s health, asked now (``healthy``, and ``health`` in words)."""
    m = _member(config, name, host_port(address, "--address") if address else None)
    if m.kind == "bridge":
        await _bridge(config, m, timeout)
    else:
        identity = AgentIdentity(config.identity_dir(prober or name), config.trust_domain)  # one line if missing
        await _grpc_health(identity, m, timeout)
    return m


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    m = asyncio.run(probe(config, args.name, prober=args.as_member, address=args.address, timeout=args.timeout))
    if not m.healthy:
        raise Unavailable(f"{m.kind} {m.name} at {m.address}: {m.health}")
    print(f"{m.kind} {m.name} at {m.address}: {m.health}", flush=True)
    return 0
