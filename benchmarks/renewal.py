"""Automatic renewal under load: members renew their own certificates while variant 3's load runs,
and the issuing intermediate is rotated in the middle; every failed call is counted.

Its own mesh: leaves live ``LIFETIME`` seconds (what the harness issues, and ``control.cert_ttl``
for what the control plane issues), ``max_connection_age: 0`` (connections are never closed by
age), default revocation settings. Real processes as in the rotation scenario: the control plane,
the echo agent and the load generator (a MeshNode). Nobody re-issues files: each member renews at
about half its certificate's life with a key it makes itself (the control plane through the CA it
holds, the others through ``IdentityService.Renew``). Renewals are counted from the CA index: every
certificate the harness did not issue itself. At the end the agent's TLS certificate is fetched to
check that it was issued by the new intermediate.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from agentmesh.pki import CertificateAuthority
from benchmarks.loadgen import GrpcTarget, LoadGenerator, LoadgenSpec
from benchmarks.meshdir import AGENT, CLIENT, create_mesh
from benchmarks.procs import Processes
from benchmarks.rotation import served_certificate

__all__ = ["LIFETIME", "MEMBERS", "run_renewal"]

LIFETIME = 6.0  # seconds, of every leaf in this mesh
MEMBERS = ("control", AGENT, CLIENT)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):  # another issuer, or not even a matching key type
        return False
    return True


def _renewals(ca: CertificateAuthority, ours: set[int], rotated_at: float) -> tuple[dict[str, int], dict[str, int]]:
    """Certificates issued to each member by anyone but the harness: all of them, and those issued after
    the rotation (a renewal's notAfter is its issue time plus ``LIFETIME``)."""
    total: Counter[str] = Counter()
    after: Counter[str] = Counter()
    for e in ca.entries():
        if e.serial in ours or e.name not in MEMBERS:
            continue
        total[e.name] += 1
        if e.not_after - LIFETIME >= rotated_at:
            after[e.name] += 1
    return {m: total[m] for m in MEMBERS}, {m: after[m] for m in MEMBERS}


def run_renewal(workdir: Path, *, seconds: float, concurrency: int,
                log: Callable[[str], object] = print) -> dict[str, Any]:
    """``seconds`` of load (at least three lifetimes); the intermediate is rotated half-way."""
    if seconds < 3 * LIFETIME:
        raise ValueError(f"renewal under load needs at least 3 lifetimes ({3 * LIFETIME:g} s) of load")
    mesh = create_mesh(workdir / "renewal-mesh", max_connection_age="0s", leaf_ttl=LIFETIME,
                       control={"cert_ttl": f"{LIFETIME:g}s"})
    logs = workdir / "renewal-logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = Processes(logs)
    cfg = str(mesh.config_path)
    ours = {e.serial for e in mesh.ca.entries()}
    gen: LoadGenerator | None = None
    try:
        # each member gets a fresh leaf just before it starts, so a slow start does not eat its lifetime
        ours.add(mesh.rotate("control", ttl=LIFETIME))
        started = time.time()
        procs.python("control", "control", ["--config", cfg],
                     int(mesh.config.control.address.rpartition(":")[2])).wait_listening()
        ours.add(mesh.rotate(AGENT, ttl=LIFETIME))
        agent = procs.python("agent", "agent", ["--config", cfg, "--name", AGENT],
                             int(mesh.address(AGENT).rpartition(":")[2]))
        agent.wait_listening()
        ours.add(mesh.rotate(CLIENT, ttl=LIFETIME))
        gen = LoadGenerator(LoadgenSpec(cfg, {"mesh": GrpcTarget("mesh", agent=AGENT)}))
        log(f"  {seconds:g} s of load, leaves of {LIFETIME:g} s, the intermediate rotated after {seconds / 2:g} s")
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(gen.run, "mesh", seconds, concurrency, [agent.pid])
            time.sleep(seconds / 2)  # the load runs meanwhile
            rotated_at = time.time()
            new_intermediate = CertificateAuthority.load(mesh.config.ca_dir).rotate()
            log("  rotated the issuing intermediate")
            r = running.result()
        ended = time.time()
        served = served_certificate(mesh, AGENT)
    except Exception as e:
        return {"status": "failed", "reason": f"{type(e).__name__}: {e}", "logs": str(logs)}
    finally:
        if gen is not None:
            gen.close()
        procs.stop_all()
    renewals, after_rotation = _renewals(CertificateAuthority.load(mesh.config.ca_dir), ours, rotated_at)
    return {
        "status": "ok",
        "leaf_lifetime_s": LIFETIME,
        "max_connection_age": "0 (off)",
        "seconds": seconds,
        "window_s": round(ended - started, 1),  # from the control plane's start to the end of the load
        "rotated_after_s": round(seconds / 2, 1),
        "calls": r.calls,
        "failed_calls": r.errors,
        "error_codes": r.error_codes,
        "error_samples": r.extra.get("error_samples", {}),
        "rps": r.rps,
        "p99_ms": r.p99_ms,
        "renewals": renewals,
        "renewals_after_rotation": after_rotation,
        "every_member_renewed_twice": min(renewals.values()) >= 2,
        "agent_serves_new_intermediate": _issued_by(served, new_intermediate),
    }
