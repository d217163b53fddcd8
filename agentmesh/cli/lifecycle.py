"""``agentmesh revoke-agent`` (the kill switch) and ``agentmesh reinstate``.

The kill switch revokes every unexpired certificate of a member, blocks its renewal and joins, and
records who did it and why (the CA index and an audit span). Members refuse it once the control
plane has pushed the change: the control plane notices within ``POLL`` seconds and streams it at once.
"""

from __future__ import annotations

import argparse
import getpass

from agentmesh.audit import build_audit
from agentmesh.cli.usage import examples
from agentmesh.config import MeshConfig
from agentmesh.configfile import load_config
from agentmesh.errors import ConfigError
from agentmesh.identity import validate_agent_name
from agentmesh.pki import CertificateAuthority
from agentmesh.pki.join import JoinTokens
from agentmesh.runtime.publisher import POLL

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("revoke-agent", help="kill switch: revoke a member's certificates and tokens, block renewal",
                       **examples("agentmesh revoke-agent summarizer --config mesh.yaml --reason \"compromised\""))
    p.add_argument("name", help="member name")
    p.add_argument("--config", required=True, help="mesh config file")
    p.add_argument("--reason", default="", help="why (recorded in the CA index and the audit log)")
    p.set_defaults(func=_revoke_agent)

    r = sub.add_parser("reinstate", help="lift a member's kill switch (it then joins or is issued anew)",
                       **examples("agentmesh reinstate summarizer --config mesh.yaml"))
    r.add_argument("name", help="member name")
    r.add_argument("--config", required=True, help="mesh config file")
    r.set_defaults(func=_reinstate)


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _members(config: MeshConfig) -> set[str]:
    return {*config.agents, config.bridge.name}


def _audit(config: MeshConfig, name: str, action: str, attrs: dict[str, str | int]) -> None:
    """One audit span for an operator's action, in the mesh's audit log."""
    sink = build_audit(config.audit, service_name="agentmesh-admin")
    span = sink.tracer.start_span(f"agentmesh.admin/{action}")
    span.set_attributes({"agentmesh.admin.target": name, **attrs})
    span.end()
    sink.shutdown(5)


def _revoke_agent(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    name = validate_agent_name(args.name)
    if name not in _members(config):
        raise ConfigError(f"{name!r} is not a member of {args.config} (agents: "
                          f"{', '.join(sorted(config.agents)) or 'none'}; bridge: {config.bridge.name})")
    if name == config.control.name:
        raise ConfigError("the control plane cannot revoke itself; re-initialise or rotate the CA instead")
    ca = CertificateAuthority.load(config.ca_dir)
    by = _operator()
    # block first: from here on nothing is issued to it, so the revocation below misses no certificate
    # (a renewal racing this command is refused or revoked); tokens made before today never work
    ca.block(name, reason=args.reason, by=by)
    JoinTokens(config.ca_dir).void(name)
    live = [e for e in ca.entries() if e.name == name and e.revoked_at is None]
    revoked = ca.revoke(name, reason=args.reason, by=by) if live else []
    _audit(config, name, "RevokeAgent", {"agentmesh.admin.by": by, "agentmesh.admin.reason": args.reason,
                                          "agentmesh.admin.certificates": len(revoked)})
    print(f"revoked {name}: {len(revoked)} certificate(s); its tokens, delegations, renewal and joins are refused")
    print(f"members refuse it within ~{POLL + 0.5:.2f} s of now (the control plane checks the CA every {POLL} s and "
          f"pushes at once); a member cut off from the control plane refuses new peers after "
          f"revocation.max_staleness ({config.revocation.max_staleness:.0f} s)")
    return 0


def _reinstate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    name = validate_agent_name(args.name)
    ca = CertificateAuthority.load(config.ca_dir)
    if not ca.unblock(name, by=_operator()):
        raise ConfigError(f"{name} is not revoked by the kill switch")
    _audit(config, name, "Reinstate", {"agentmesh.admin.by": _operator()})
    print(f"reinstated {name}: give it a new identity with 'agentmesh cert join-token {name} --ca {config.ca_dir}' "
          f"or 'agentmesh cert issue {name} --ca {config.ca_dir} --out DIR'")
    return 0
