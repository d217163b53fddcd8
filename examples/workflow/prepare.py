"""Prepare a work directory for the workflow mesh: the config (with free ports), a CA, identities."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

import yaml

from agentmesh.pki import CertificateAuthority, write_identity

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(workdir: Path, *, source: Path = HERE / "mesh.yaml", free_ports: bool = True,
            join: Sequence[str] = ()) -> Path:
    """Writes ``workdir/mesh.yaml``, creates the CA in ``workdir/.mesh/ca`` and onboards every member
    but those in ``join`` (``agentmesh up`` joins them: their keys are made by the members themselves)."""
    doc = yaml.safe_load(source.read_text())
    if free_ports:
        for agent in doc["agents"].values():
            agent["address"] = f"127.0.0.1:{_free_port()}"
        doc["control"]["address"] = f"127.0.0.1:{_free_port()}"
        doc["control"]["join_address"] = f"127.0.0.1:{_free_port()}"
        doc["bridge"]["listen"] = f"127.0.0.1:{_free_port()}"
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "mesh.yaml"
    config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    ca = CertificateAuthority.init(workdir / doc["ca"], doc["trust_domain"], force=True)
    identities = workdir / doc["identities"]
    for name in [*doc["agents"], "control", "bridge"]:
        if name in join:
            continue
        dns = ["localhost"] if name == "bridge" else []
        write_identity(ca.issue(name, dns=dns), identities / name)
    return config_path
