"""What one join costs: the control plane's side and the member's side.

Control side, in-process (no gRPC, no TLS), with one loaded CA as the control plane holds it: redeem
the one-time token (``JoinTokens.redeem``), check the CSR (``check_csr``), issue from it
(``CertificateAuthority.issue_csr``, which appends to the CA index). Then the same over the real
``JoinService.Join`` RPC (``start_control`` with ``control.join_address``; one warm TLS connection, so
no handshake per join): what a member waits for on loopback, the handler's own extra checks included.
Member side: a new key and a CSR naming its SPIFFE ID. Tokens are created beforehand (that is the
operator's ``cert join-token``, not part of a join). Redeeming folds the whole join-token file, so
the in-process steps are timed again once the file holds ``history`` tokens.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import grpc

from agentmesh.identity import SpiffeId
from agentmesh.pki import CertificateAuthority
from agentmesh.pki.certs import new_key
from agentmesh.pki.csr import check_csr, make_csr
from agentmesh.pki.join import JoinTokens
from agentmesh.runtime.control import start_control
from agentmesh.v1 import control_pb2, control_pb2_grpc
from benchmarks.loadgen import percentile
from benchmarks.meshdir import AGENT, BenchMesh, create_mesh, free_port

__all__ = ["run_join"]

HISTORY_JOINS = 20
STEPS = ("redeem_token", "check_csr", "issue_from_csr")


def _stats(ns: list[int]) -> dict[str, float]:
    ordered = sorted(ns)
    return {"median_ms": statistics.median(ordered) / 1e6, "p95_ms": percentile(ordered, 0.95) / 1e6,
            "max_ms": ordered[-1] / 1e6}


def _control_side(mesh: BenchMesh, tokens: list[str]) -> tuple[list[int], dict[str, list[int]]]:
    """Per join: (redeem + check + issue) in ns, and each step's ns."""
    config = mesh.config
    sid = SpiffeId.for_agent(config.trust_domain, AGENT)
    csrs = [make_csr(new_key(), sid) for _ in tokens]
    ca = CertificateAuthority.load(config.ca_dir)
    store = JoinTokens(config.ca_dir)
    whole: list[int] = []
    steps: dict[str, list[int]] = {k: [] for k in STEPS}
    for token, csr in zip(tokens, csrs, strict=True):
        t0 = time.perf_counter_ns()
        grant = store.redeem(token, blocked=ca.blocked())
        t1 = time.perf_counter_ns()
        check_csr(csr, sid)
        t2 = time.perf_counter_ns()
        ca.issue_csr(grant.name, csr, ttl=config.control.cert_ttl, dns=grant.dns)
        t3 = time.perf_counter_ns()
        whole.append(t3 - t0)
        for k, ns in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            steps[k].append(ns)
    return whole, steps


async def _rpc_side(mesh: BenchMesh, tokens: list[str]) -> list[int]:
    """Per join: the ``Join`` RPC's round trip on one warm connection, in ns."""
    config = mesh.config
    assert config.control.join_address is not None
    sid = SpiffeId.for_agent(config.trust_domain, AGENT)
    csrs = [make_csr(new_key(), sid) for _ in tokens]
    quiet = logging.getLogger("agentmesh")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the control plane logs every join
    control = await start_control(config)
    creds = grpc.ssl_channel_credentials(root_certificates=mesh.ca.bundle)
    options = [("grpc.ssl_target_name_override", config.control.name)]
    out: list[int] = []
    try:
        async with grpc.aio.secure_channel(config.control.join_address, creds, options=options) as channel:
            stub = control_pb2_grpc.JoinServiceStub(channel)
            await channel.channel_ready()
            for token, csr in zip(tokens, csrs, strict=True):
                t0 = time.perf_counter_ns()
                await stub.Join(control_pb2.JoinRequest(join_token=token, csr_pem=csr), timeout=10)
                out.append(time.perf_counter_ns() - t0)
    finally:
        await control.stop(0)
        control.sink.shutdown(2)
        quiet.setLevel(level)
    return out


def _member_side(mesh: BenchMesh, joins: int) -> dict[str, list[int]]:
    sid = SpiffeId.for_agent(mesh.config.trust_domain, AGENT)
    member: dict[str, list[int]] = {k: [] for k in ("new_key", "make_csr", "key_and_csr")}
    for _ in range(joins):
        t0 = time.perf_counter_ns()
        key = new_key()
        t1 = time.perf_counter_ns()
        make_csr(key, sid)
        t2 = time.perf_counter_ns()
        for k, ns in zip(member, (t1 - t0, t2 - t1, t2 - t0), strict=True):
            member[k].append(ns)
    return member


def run_join(workdir: Path, *, joins: int = 60, history: int = 0) -> dict[str, Any]:
    """``history``: then grow the join-token file to that many tokens and time the control side again."""
    mesh = create_mesh(workdir / "join-mesh", control={"join_address": f"127.0.0.1:{free_port()}"})
    store = JoinTokens(mesh.config.ca_dir)
    try:
        whole, steps = _control_side(mesh, [store.create(AGENT) for _ in range(joins)])
        rpc = asyncio.run(_rpc_side(mesh, [store.create(AGENT) for _ in range(joins)]))
        member = _member_side(mesh, joins)
        at_history = None
        if history > 2 * joins + HISTORY_JOINS:
            for _ in range(history - 2 * joins - HISTORY_JOINS):
                store.create(AGENT)
            late, _ = _control_side(mesh, [store.create(AGENT) for _ in range(HISTORY_JOINS)])
            at_history = {"tokens_in_file": history, "joins": HISTORY_JOINS, **_stats(late)}
    except Exception as e:
        return {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
    return {
        "status": "ok",
        "joins": joins,
        "how": "in-process with one loaded CA: JoinTokens.redeem + check_csr + CertificateAuthority.issue_csr; "
               "rpc: JoinService.Join on one warm TLS connection to start_control's join port",
        "control": _stats(whole),
        "control_steps": {k: _stats(v) for k, v in steps.items()},
        "control_rpc": _stats(rpc),
        "control_at_history": at_history,
        "member": {k: _stats(v) for k, v in member.items()},
    }
