"""Certificate rotation under load: mesh members get new certificates, several times, while
variant 3's load runs; every failed call is counted.

Its own mesh, with ``max_connection_age: 2s`` so connections re-handshake (and pick up the new
certificates) during the run, and identity checks every 0.2 s. A rotation writes
``write_identity(ca.issue(name))`` into a member's identity directory. Two phases, so a failure
can be placed: first the serving side only (the agent and the control plane), then every member
(the load generator, a mesh agent calling through ``MeshNode.stub``, too). At the end the
agent's TLS certificate is fetched to check that it serves the newest one.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography import x509

from benchmarks.loadgen import GrpcTarget, LoadGenerator, LoadgenSpec
from benchmarks.meshdir import AGENT, CLIENT, BenchMesh, create_mesh
from benchmarks.procs import Processes

__all__ = ["PHASES", "run_rotation", "served_certificate", "served_serial"]

CHECK_EVERY = 0.2
MAX_CONNECTION_AGE = "2s"
#: (phase, members rotated in it)
PHASES = (("serving side", (AGENT, "control")), ("every member", (AGENT, CLIENT, "control")))


def _handshake(mesh: BenchMesh, name: str) -> x509.Certificate:
    ident = mesh.config.identity_dir(CLIENT)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(ident / "bundle.pem"))
    ctx.load_cert_chain(str(ident / "cert.pem"), str(ident / "key.pem"))
    ctx.set_alpn_protocols(["h2"])
    host, _, port = mesh.address(name).rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def served_certificate(mesh: BenchMesh, name: str, *, attempts: int = 3) -> x509.Certificate:
    """The certificate agent ``name`` presents in a TLS handshake right now, seen as the load generator
    (with its files as they are: tried again when a renewal replaced them between two reads)."""
    for _ in range(attempts - 1):
        try:
            return _handshake(mesh, name)
        except (ssl.SSLError, OSError):
            time.sleep(0.2)  # the client's key and certificate were being replaced
    return _handshake(mesh, name)


def served_serial(mesh: BenchMesh, name: str) -> int:
    """The serial of the certificate agent ``name`` presents in a TLS handshake right now."""
    return served_certificate(mesh, name).serial_number


def _phase(gen: LoadGenerator, mesh: BenchMesh, members: tuple[str, ...], seconds: float, concurrency: int,
           rotations: int, server_pid: int, latest: dict[str, int], log: Callable[[str], object]) -> dict[str, Any]:
    interval = seconds / (rotations + 1)  # spread over the run, each long enough for reconnections
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(gen.run, "mesh", seconds, concurrency, [server_pid])
        for i in range(rotations):
            time.sleep(interval)  # the load runs meanwhile
            for name in members:
                latest[name] = mesh.rotate(name)
            log(f"  rotation {i + 1}/{rotations}: new certificates for {', '.join(members)}")
        r = running.result()
    return {"rotated": list(members), "rotations": rotations, "seconds": seconds, "calls": r.calls,
            "failed_calls": r.errors, "error_codes": r.error_codes, "error_samples": r.extra.get("error_samples", {}),
            "rps": r.rps, "p99_ms": r.p99_ms}


def run_rotation(workdir: Path, *, seconds: float, concurrency: int, rotations: int = 2,
                 log: Callable[[str], object] = print) -> dict[str, Any]:
    """``seconds`` and ``rotations`` are per phase."""
    mesh = create_mesh(workdir / "rotation-mesh", max_connection_age=MAX_CONNECTION_AGE)
    logs = workdir / "rotation-logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = Processes(logs)
    cfg = str(mesh.config_path)
    gen: LoadGenerator | None = None
    phases: dict[str, dict[str, Any]] = {}
    try:
        control_port = int(mesh.config.control.address.rpartition(":")[2])
        procs.python("control", "control", ["--config", cfg], control_port).wait_listening()
        agent = procs.python("agent", "agent", ["--config", cfg, "--name", AGENT, "--check-every", str(CHECK_EVERY)],
                             int(mesh.address(AGENT).rpartition(":")[2]))
        agent.wait_listening()
        gen = LoadGenerator(LoadgenSpec(cfg, {"mesh": GrpcTarget("mesh", agent=AGENT)}, check_every=CHECK_EVERY))
        gen.run("mesh", 0.5, concurrency, ())  # warm
        latest: dict[str, int] = {}
        for name, members in PHASES:
            log(f"  phase: {name}")
            phases[name] = _phase(gen, mesh, members, seconds, concurrency, rotations, agent.pid, latest, log)
            log(f"  {name}: {phases[name]['calls']} calls OK, {phases[name]['failed_calls']} failed "
                f"{phases[name]['error_samples'] or ''}")
        time.sleep(CHECK_EVERY * 2)
        serves_latest = served_serial(mesh, AGENT) == latest[AGENT]
        client_version = gen.run("mesh", 0.1, 1, ()).extra.get("client_identity_version")
    except Exception as e:
        return {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
    finally:
        if gen is not None:
            gen.close()
        procs.stop_all()
    calls = sum(p["calls"] for p in phases.values())
    failed = sum(p["failed_calls"] for p in phases.values())
    codes: dict[str, int] = {}
    for p in phases.values():
        for code, n in p["error_codes"].items():
            codes[code] = codes.get(code, 0) + n
    return {
        "status": "ok",
        "max_connection_age": MAX_CONNECTION_AGE,
        "check_every": CHECK_EVERY,
        "phases": phases,
        "seconds": seconds * len(phases),
        "rotations": rotations * len(phases),
        "calls": calls,
        "failed_calls": failed,
        "error_codes": codes,
        "server_serves_latest_cert": serves_latest,
        "client_identity_version": client_version,
    }
