"""A throwaway mesh on disk for one benchmark run: CA, identities, token key, mesh.yaml, gateway key.

Every variant talks to an agent called ``echo`` (``echo-redis`` for the Redis limiter) with the
same request; the load generator is the mesh member ``loadgen``. The policy allows exactly the
calls the benchmark makes, and a rate-limit rule applies to every call, at a rate never reached.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agentmesh.config import MeshConfig
from agentmesh.configfile import load_config
from agentmesh.pki import CertificateAuthority, write_identity
from agentmesh.runtime.publisher import TrustPublisher
from agentmesh.tokens import TokenAuthority
from agentmesh.trust import TrustSnapshot

__all__ = [
    "AGENT",
    "CLIENT",
    "GATEWAY",
    "GATEWAY_AUDIENCE",
    "GATEWAY_ISSUER",
    "REDIS_AGENT",
    "TWEAKS",
    "BenchMesh",
    "apply_tweaks",
    "create_mesh",
    "free_port",
    "mesh_variant",
    "trust_snapshot",
]

TRUST_DOMAIN = "bench.example.org"
AGENT = "echo"
REDIS_AGENT = "echo-redis"
CLIENT = "loadgen"
GATEWAY = "gateway"  # variant 8's identity towards the bare agent (a certificate of the mesh CA, nothing more)
MEMBERS = (AGENT, REDIS_AGENT, CLIENT, "bridge", "control", GATEWAY)
EXTERNAL_SUBJECT = "alice@example.org"
GATEWAY_ISSUER = "https://idp.example.org"
GATEWAY_AUDIENCE = "gateway"
HIGH_RATE = "1000000/s"  # applies to every call, never reached


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class BenchMesh:
    root: Path
    config_path: Path
    config: MeshConfig
    ca: CertificateAuthority
    client_token: str  # an external client's mesh token (role client), for the REST bridge
    gateway_token: str  # the same principal's token from the "IdP" of the FastAPI gateway
    gateway_public_key: Path  # PEM, for the gateway
    insecure_port: int
    mtls_port: int
    gateway_port: int

    def address(self, name: str) -> str:
        return self.config.agent(name).address

    @property
    def bridge_listen(self) -> str:
        return self.config.bridge.listen

    def rotate(self, name: str, *, ttl: float | None = None) -> int:
        """A fresh key and certificate for ``name`` in its identity directory (the operator's re-issue;
        ``ttl``: the leaf's lifetime, default the CA's); returns the serial."""
        issued = self.ca.issue(name) if ttl is None else self.ca.issue(name, ttl=ttl)
        write_identity(issued, self.config.identity_dir(name))
        return issued.serial


def trust_snapshot(config: MeshConfig) -> TrustSnapshot:
    """The trust data the control plane would stream to members now (for in-process benchmarks without one)."""
    authority = TokenAuthority.load(config.ca_dir, issuer=config.tokens.issuer)
    return TrustPublisher(CertificateAuthority.load(config.ca_dir), jwks_json=json.dumps(authority.jwks()),
                          issuer=authority.issuer).snapshot


#: config tweaks the profiler's ablation applies to an agent (``serve.py agent --tweak``)
TWEAKS = ("no-export", "no-guard-patterns", "no-ratelimit-rules")


def apply_tweaks(config: MeshConfig, tweaks: Sequence[str]) -> MeshConfig:
    """``config`` with parts of the chain's work switched off, to measure what each costs."""
    for tweak in tweaks:
        if tweak == "no-export":  # spans are still created and ended, but never exported
            config = dataclasses.replace(config, audit=dataclasses.replace(config.audit, exporters=("none",)))
        elif tweak == "no-guard-patterns":  # the size check only
            config = dataclasses.replace(config, guard=dataclasses.replace(config.guard, default_patterns=False))
        elif tweak == "no-ratelimit-rules":
            config = dataclasses.replace(config, rate_limits=dataclasses.replace(config.rate_limits, rules=()))
        else:
            raise ValueError(f"unknown tweak {tweak!r} (known: {', '.join(TWEAKS)})")
    return config


def _mesh_doc(max_connection_age: str, extra_agents: Sequence[str], callers: Sequence[str],
              control: Mapping[str, Any]) -> dict[str, Any]:
    agent_methods = ["/agentmesh.v1.Agent/*"]
    extra = {name: {"address": f"127.0.0.1:{free_port()}", "roles": ["echo"]} for name in extra_agents}
    extra_callers = {name: {"address": f"127.0.0.1:{free_port()}", "roles": ["loadgen"]} for name in callers}
    return {
        "trust_domain": TRUST_DOMAIN,
        "ca": "ca",
        "identities": "identities",
        "agents": {
            AGENT: {"address": f"127.0.0.1:{free_port()}", "roles": ["echo"]},
            REDIS_AGENT: {"address": f"127.0.0.1:{free_port()}", "roles": ["echo"]},
            CLIENT: {"address": f"127.0.0.1:{free_port()}", "roles": ["loadgen"]},
            **extra,
            **extra_callers,
        },
        "control": {"address": f"127.0.0.1:{free_port()}", **control},
        "bridge": {"listen": f"127.0.0.1:{free_port()}", "tls": False},
        "policy": [
            {"name": "loadgen-to-echo", "action": "allow", "to": [AGENT, REDIS_AGENT, *extra],
             "methods": agent_methods,
             "from": [CLIENT, *callers], "roles": ["loadgen"]},
            {"name": "client-via-bridge", "action": "allow", "to": [AGENT], "methods": agent_methods,
             "roles": ["client"], "via": ["bridge"]},
        ],
        "rate_limits": {
            "backend": "memory",
            "rules": [{"name": "bench", "match": {"roles": ["loadgen", "client"]}, "rate": HIGH_RATE,
                       "burst": 1_000_000}],
        },
        "audit": {"exporters": ["jsonl"], "jsonl_path": "audit.jsonl"},
        "max_connection_age": max_connection_age,
        "grace_period": "1s",
    }


def mesh_variant(mesh: BenchMesh, name: str, bridge: Mapping[str, Any]) -> tuple[Path, str]:
    """A second mesh file beside ``mesh.config_path`` (same CA, identities, control plane, agents and policy)
    whose ``bridge`` section also has ``bridge`` (e.g. ``{"txn_reuse": "30s"}``) and its own listen address,
    for a second bridge process; returns (its path, the bridge's listen address)."""
    doc = yaml.safe_load(mesh.config_path.read_text())
    listen = f"127.0.0.1:{free_port()}"
    doc["bridge"] = {**doc["bridge"], **bridge, "listen": listen}
    path = mesh.config_path.with_name(f"mesh-{name}.yaml")
    path.write_text(yaml.safe_dump(doc))
    load_config(path)  # fails here, not in the bridge process, if this tree does not know a key
    return path, listen


def _gateway_key(root: Path) -> tuple[str, Path]:
    """An ES256 key of the gateway's identity provider, and one token it issued."""
    key = ec.generate_private_key(ec.SECP256R1())
    pub = root / "gateway-public.pem"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    now = int(time.time())
    token = jwt.encode({"iss": GATEWAY_ISSUER, "aud": GATEWAY_AUDIENCE, "sub": EXTERNAL_SUBJECT,
                        "roles": ["client"], "iat": now, "exp": now + 3600}, key, algorithm="ES256",
                       headers={"kid": "idp-1"})
    return token, pub


def create_mesh(root: Path, *, max_connection_age: str = "300s", extra_agents: Sequence[str] = (),
                callers: Sequence[str] = (), leaf_ttl: float | None = None,
                control: Mapping[str, Any] | None = None) -> BenchMesh:
    """``extra_agents``: more echo agents (same roles and policy as ``echo``), e.g. for the ablation;
    ``callers``: more members that may call them (as ``loadgen`` does); ``leaf_ttl``: the lifetime of
    the identities issued here (default the CA's, 24 h); ``control``: more keys of the ``control``
    section, e.g. ``{"cert_ttl": "6s"}`` for what the control plane issues (renewals, joins).
    ``max_connection_age: "0s"`` switches closing connections by age off."""
    root.mkdir(parents=True, exist_ok=True)
    doc = _mesh_doc(max_connection_age, extra_agents, callers, control or {})
    ca = CertificateAuthority.init(root / "ca", TRUST_DOMAIN)
    for name in (*MEMBERS, *extra_agents, *callers):
        issued = ca.issue(name) if leaf_ttl is None else ca.issue(name, ttl=leaf_ttl)
        write_identity(issued, root / "identities" / name)
    path = root / "mesh.yaml"
    path.write_text(yaml.safe_dump(doc))
    config = load_config(path)
    authority = TokenAuthority.ensure(config.ca_dir, issuer=config.tokens.issuer)
    client_token = authority.issue(sub=EXTERNAL_SUBJECT, roles=["client"], audience=config.tokens.audience,
                                   ttl=3600)
    gateway_token, gateway_pub = _gateway_key(root)
    return BenchMesh(root, path, config, ca, client_token, gateway_token, gateway_pub,
                     insecure_port=free_port(), mtls_port=free_port(), gateway_port=free_port())
