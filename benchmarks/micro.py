"""In-process micro-benchmarks: the cost of each server-chain stage, of the whole server and client
chains (``chainbench.py``) and of recording their metrics (``metricscost.py``), and CA issuance throughput.

Each stage is timed with ``time.perf_counter_ns`` over batches sized to the time budget; the
median of five batches is reported, in microseconds per operation. The objects are built the way
``MeshNode`` builds them, from the same mesh.yaml the load variants use.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.trace import SpanKind

from agentmesh.audit import attributes as A
from agentmesh.audit import build_audit, rpc_attributes
from agentmesh.audit.spans import STATUS_ATTRIBUTES, rpc_span_name
from agentmesh.guard import PayloadGuard
from agentmesh.identity import peer_identity_from_pem
from agentmesh.interceptors.identity import PeerIdentityCache
from agentmesh.pki import CertificateAuthority
from agentmesh.policy import PolicyEngine, PolicyRequest
from agentmesh.ratelimit import MemoryLimiter
from agentmesh.runtime.credentials import AgentIdentity
from agentmesh.runtime.truststate import TrustState
from agentmesh.tokens import KeySet, TokenAuthority, verifier_from_config
from benchmarks.chainbench import run_chain_micro
from benchmarks.echo import METHOD, request
from benchmarks.meshdir import AGENT, CLIENT, TRUST_DOMAIN, BenchMesh, trust_snapshot

__all__ = ["STAGES", "run_micro", "time_op"]

#: stage key -> what it measures (the keys of ``micro.stages_us`` in latest.json)
STAGES = {
    "peer_identity_cached": "peer identity, cached (PeerIdentityCache.identify)",
    "peer_identity_uncached": "peer identity, first sight of a cert (peer_identity_from_pem)",
    "token_verify_cold": "token verify, cold (TokenVerifier.verify, cache cleared)",
    "token_verify_cached": "token verify, cached (TokenVerifier.verify)",
    "policy_decide": "policy decide (PolicyEngine.decide)",
    "ratelimit_memory": "in-memory bucket (MemoryLimiter.acquire)",
    "audit_span_jsonl": "span start+end, JSONL sink (caller thread)",
    "payload_guard": "payload guard (PayloadGuard.check)",
}
#: the stages one steady-state call pays on the server (their sum is an estimate of the chain)
STEADY_STATE = ("peer_identity_cached", "token_verify_cached", "policy_decide", "ratelimit_memory",
                "audit_span_jsonl", "payload_guard")


def _batch_ns(fn: Callable[[], object], n: int) -> int:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return time.perf_counter_ns() - t0


def time_op(fn: Callable[[], object], seconds: float, *, batches: int = 5, max_batch: int | None = None) -> float:
    """Microseconds per call of ``fn``: the median of ``batches`` batches filling ``seconds``."""
    n = 1
    while (spent := _batch_ns(fn, n)) < 2_000_000 and n < 1_000_000:  # calibrate on >= 2 ms
        n *= 2
    per_op = spent / n
    size = max(1, int(seconds * 1e9 / batches / per_op))
    if max_batch is not None:
        size = min(size, max_batch)
    return statistics.median(_batch_ns(fn, size) / size for _ in range(batches)) / 1e3


def _run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Result of a coroutine that never suspends (MemoryLimiter.acquire), without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("the coroutine suspended")


def _span_costs(mesh: BenchMesh, workdir: Path, seconds: float) -> tuple[float, float, int]:
    """(wall us per span in the caller, CPU us per span including the exporter thread, spans dropped)."""
    cfg = dataclasses.replace(mesh.config.audit, jsonl_path=workdir / "micro-audit.jsonl")
    sink = build_audit(cfg, service_name=AGENT)
    tracer = sink.tracer
    start_attrs = {**rpc_attributes(METHOD), A.AGENT: AGENT}
    end_attrs: dict[str, Any] = {  # as interceptors/audit.py sets them when a call ends
        **STATUS_ATTRIBUTES[grpc.StatusCode.OK], A.NETWORK_PEER_ADDRESS: "127.0.0.1", A.NETWORK_PEER_PORT: 51234,
        A.PEER_SPIFFE_ID: f"spiffe://{TRUST_DOMAIN}/agent/{CLIENT}", A.ENDUSER_ID: f"spiffe://{TRUST_DOMAIN}/agent/{CLIENT}",
        A.ROLES: ["loadgen"], A.DECISION: "allow", A.RULE: "loadgen-to-echo", A.RATELIMIT_REMAINING: 999_999}

    name = rpc_span_name(METHOD)

    def span() -> None:
        s = tracer.start_span(name, kind=SpanKind.SERVER, attributes=start_attrs)
        s.set_attributes(end_attrs)
        s.end()

    batch = 1000  # below the sink's queue size, flushed between batches, so nothing is dropped
    wall: list[float] = []
    cpu0 = time.process_time()
    total = 0
    deadline = time.perf_counter() + seconds
    while len(wall) < 3 or time.perf_counter() < deadline:
        wall.append(_batch_ns(span, batch) / batch / 1e3)
        total += batch
        sink.force_flush(10)
    cpu = (time.process_time() - cpu0) / total * 1e6
    dropped = sink.stats["dropped"]
    sink.shutdown(5)
    return statistics.median(wall), cpu, dropped


def _ca_rate(workdir: Path, seconds: float) -> tuple[float, int]:
    ca = CertificateAuthority.init(workdir / "micro-ca", TRUST_DOMAIN)
    n = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or n < 10:
        ca.issue("bench-agent", record=True)
        n += 1
    return n / elapsed, n


def run_micro(mesh: BenchMesh, workdir: Path, seconds: float, ca_seconds: float) -> dict[str, Any]:
    config = mesh.config
    client = AgentIdentity(config.identity_dir(CLIENT), config.trust_domain)
    trust = TrustState(config.revocation)
    trust.update(trust_snapshot(config))  # what a member holds once the control plane streamed it
    identities = PeerIdentityCache(config.trust_domain, trust=trust)
    pem = client.leaf_pem
    authority = TokenAuthority.load(config.ca_dir, issuer=config.tokens.issuer)
    verifier = verifier_from_config(config.tokens, KeySet.from_authority(authority))
    peer_id = f"spiffe://{TRUST_DOMAIN}/agent/{CLIENT}"
    token = authority.issue(sub=peer_id, roles=["loadgen"], audience=config.tokens.audience, ttl=3600,
                            cnf_thumbprint=client.thumbprint)
    policy = PolicyEngine(config.policy, config.trust_domain, max_depth=config.tokens.max_delegation_depth)
    limiter = MemoryLimiter(config.rate_limits.rules)
    guard = PayloadGuard(config.guard)
    task = request()

    def verify() -> object:
        return verifier.verify(token, peer_thumbprint=client.thumbprint, peer_spiffe_id=peer_id, require_binding=True)

    def verify_cold() -> object:
        verifier.clear_cache()
        return verify()

    def decide() -> object:
        return policy.decide(PolicyRequest(to=AGENT, method=METHOD, peer=peer_id, principal=peer_id,
                                           roles=("loadgen",), chain=()))

    identities.identify(pem)
    stages: dict[str, float] = {
        "peer_identity_cached": time_op(lambda: identities.identify(pem), seconds),
        "peer_identity_uncached": time_op(lambda: peer_identity_from_pem(pem, TRUST_DOMAIN, time.time()), seconds),
        "token_verify_cold": time_op(verify_cold, seconds),
        "token_verify_cached": time_op(verify, seconds),
        "policy_decide": time_op(decide, seconds),
        "ratelimit_memory": time_op(lambda: _run_sync(limiter.acquire(peer_id, AGENT, METHOD, ("loadgen",))),
                                    seconds),
    }
    span_wall, span_cpu, dropped = _span_costs(mesh, workdir, seconds)
    stages["audit_span_jsonl"] = span_wall
    stages["payload_guard"] = time_op(lambda: guard.check(task), seconds)
    ca_rate, ca_n = _ca_rate(workdir, ca_seconds)
    chains = run_chain_micro(mesh, max(seconds, 0.1))  # batches large enough to amortise the flushes
    return {
        "chains_in_process": chains,
        "metrics_cost": chains.pop("metrics_cost"),
        "stages_us": stages,
        "stage_descriptions": STAGES,
        "steady_state_sum_us": sum(stages[k] for k in STEADY_STATE),
        "audit_span_cpu_us_incl_export": span_cpu,
        "audit_spans_dropped": dropped,
        "ca_certs_per_s": ca_rate,
        "ca_certs_issued": ca_n,
    }
