"""What verifiable delegation costs: a 3-hop delegated chain against the same chain undelegated.

``python -m benchmarks.delegation [--quick]`` runs this part alone (``make bench`` runs it too).

End to end (one process, real sockets): its own mesh (CA, identities, token key), the control plane
(``start_control``), and a ``MeshNode`` per member: ``bridge`` (a client only) and the agents
``ingestor``, ``summarizer`` and ``validator``, each serving a relay that forwards the task to the
next one named in ``task.metadata["next"]`` (the validator answers). One end-to-end call is
bridge -> ingestor -> summarizer -> validator: three hops, each through both chains over mTLS.
Three variants of the same call:

    undelegated          every member calls the next acting for itself (its own bound token)
    same_transaction     the bridge calls inside ``delegating(txn)`` with ONE transaction token for
                         every call: the steady state (links reused by each HopSigner, every
                         verifier's cache hit)
    new_transaction      a fresh transaction token per call: each hop signs a new link and verifies
                         the transaction token and every link before it once (the cold path)

Calls are made one at a time and interleaved call by call (U S N, S N U, N U S, ...): on a shared
2-core machine, whole rounds of one variant after another differed by as much as the effect measured
(what other processes do changes from round to round); single calls interleaved share that equally.
Each call has its own window of ``time.process_time`` (every
thread of the process: both chains of every member, gRPC's threads, the audit exporter threads),
``time.thread_time`` (the event-loop thread, where the chains' Python code runs) and
``time.perf_counter``. A round is ``calls`` such steps; its new-transaction tokens are exchanged
before it (``MeshNode.exchange`` on the bridge's warm control channel, timed on their own: the
exchange RPC's latency) and the audit sinks are flushed before and after it, outside the windows.
Added per hop: per step, (the delegated call - the undelegated call of the same step) / 3; the median
of these paired differences is the headline (robust to what other processes do to single calls),
with a 95 % confidence interval (bootstrap over whole rounds: within this run only, another run on a
busy machine can land outside it); their mean (which also carries rare costs: a garbage
collection, an audit exporter batch landing in a window) is reported beside it. The target is met
when the whole interval is below it, missed when the whole interval is above it, and otherwise the
result is inconclusive.

In-process micro-benchmarks (no gRPC) of the pure pieces: ``verify_caller`` at the last hop
(the validator, whose mTLS peer is the summarizer) for a direct call and for a 3-link delegated
call, cache hit and miss; ``sign_link``; ``LinkVerifier.verify`` and ``TxnVerifier.verify`` on a miss.
Misses use tokens and links never seen before (pre-signed pools), not cleared caches, except where
the name says the certificate cache is cleared too.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import itertools
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agentmesh.config import MeshConfig
from agentmesh.configfile import load_config
from agentmesh.context import current_call
from agentmesh.identity import PeerIdentity, peer_identity_from_pem
from agentmesh.interceptors.client import delegating
from agentmesh.pki import CertificateAuthority, write_identity
from agentmesh.runtime.control import start_control
from agentmesh.runtime.credentials import AgentIdentity
from agentmesh.runtime.node import MeshNode
from agentmesh.tokens import KeySet, TokenAuthority, verifier_from_config
from agentmesh.tokens.delegation import Checks, principal_of, verify_caller
from agentmesh.tokens.links import HopSigner, LinkVerifier, cert_der, sign_link
from agentmesh.tokens.txn import TxnVerifier, grant, sign_txn_token, token_hash
from agentmesh.trust import check_certificate
from agentmesh.v1 import agent_pb2, agent_pb2_grpc
from benchmarks.echo import TEXT, Echo
from benchmarks.loadgen import percentile
from benchmarks.meshdir import EXTERNAL_SUBJECT, HIGH_RATE, TRUST_DOMAIN, free_port, trust_snapshot
from benchmarks.micro import time_op
from benchmarks.procs import system_busy_seconds

__all__ = ["HOPS", "SIZES", "TARGET_US_PER_HOP", "VARIANTS", "run_delegation"]

BRIDGE = "bridge"
AGENTS = ("ingestor", "summarizer", "validator")
HOPS = len(AGENTS)  # bridge -> ingestor -> summarizer -> validator
VARIANTS = ("undelegated", "same_transaction", "new_transaction")
TARGET_US_PER_HOP = 150.0  # issue 10: added CPU per hop, steady state (same transaction)


@dataclass(frozen=True, slots=True)
class Size:
    rounds: int  # each: its exchanges (outside the windows), then its steps
    calls: int  # steps per round: one end-to-end call of every variant each, one after the other
    warmup: int  # steps before the first round
    micro_batch: int  # ops per batch of a pool-based micro-benchmark (5 batches)
    micro_seconds: float  # per cache-hit micro-benchmark (time_op)


SIZES = {
    "full": Size(rounds=24, calls=30, warmup=60, micro_batch=200, micro_seconds=0.3),
    "quick": Size(rounds=8, calls=12, warmup=20, micro_batch=40, micro_seconds=0.05),
}
MICRO_BATCHES = 5

#: micro-benchmark key -> what it measures (the keys of ``delegation.micro_us`` in latest.json)
MICRO = {
    "verify_caller_direct_hit": "verify_caller, direct call, own token cached",
    "verify_caller_direct_miss": "verify_caller, direct call, own token not cached",
    "verify_caller_delegated_hit": "verify_caller, 3 links, all cached (same transaction)",
    "verify_caller_delegated_miss": "verify_caller, 3 links, new transaction (certificates cached)",
    "verify_caller_delegated_cold": "verify_caller, 3 links, new transaction, every cache cleared",
    "sign_link": "sign_link (ES256)",
    "hop_link_reused": "HopSigner.link, link reused",
    "link_verify_miss": "LinkVerifier.verify, miss (certificate cached)",
    "link_verify_miss_cert": "LinkVerifier.verify, miss incl. the certificate check",
    "link_verify_hit": "LinkVerifier.verify, hit",
    "txn_verify_miss": "TxnVerifier.verify, miss",
    "txn_verify_hit": "TxnVerifier.verify, hit",
}


# ----------------------------------------------------------------------------- the mesh


def _mesh_doc() -> dict[str, Any]:
    bridge, ingestor, summarizer, validator = BRIDGE, *AGENTS
    invoke = ["/agentmesh.v1.Agent/Invoke"]
    return {
        "trust_domain": TRUST_DOMAIN,
        "ca": "ca",
        "identities": "identities",
        "agents": {name: {"address": f"127.0.0.1:{free_port()}", "roles": [name]} for name in AGENTS},
        "control": {"address": f"127.0.0.1:{free_port()}"},
        "bridge": {"listen": f"127.0.0.1:{free_port()}", "tls": False},
        "policy": [
            # undelegated: each member acts for itself
            {"name": "bridge-to-ingestor", "action": "allow", "to": [ingestor], "methods": invoke, "from": [bridge]},
            {"name": "ingestor-to-summarizer", "action": "allow", "to": [summarizer], "methods": invoke,
             "from": [ingestor], "roles": [ingestor]},
            {"name": "summarizer-to-validator", "action": "allow", "to": [validator], "methods": invoke,
             "from": [summarizer], "roles": [summarizer]},
            # delegated: the client's principal, through exactly these hops
            {"name": "client-via-bridge", "action": "allow", "to": [ingestor], "methods": invoke, "roles": ["client"],
             "via": [bridge]},
            {"name": "client-via-ingestor", "action": "allow", "to": [summarizer], "methods": invoke,
             "roles": ["client"], "via": [ingestor]},
            {"name": "client-via-summarizer", "action": "allow", "to": [validator], "methods": invoke,
             "roles": ["client"], "via": [summarizer]},
        ],
        # one rule for every call (both kinds pay one bucket), at a rate never reached
        "rate_limits": {"backend": "memory", "rules": [{"name": "bench", "rate": HIGH_RATE, "burst": 1_000_000}]},
        "audit": {"exporters": ["jsonl"], "jsonl_path": "audit.jsonl"},
    }


def create_delegation_mesh(root: Path) -> tuple[MeshConfig, str]:
    """The mesh on disk; returns its config and an external client's token (role ``client``) to exchange."""
    root.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.init(root / "ca", TRUST_DOMAIN)
    for name in (*AGENTS, BRIDGE, "control"):
        write_identity(ca.issue(name), root / "identities" / name)
    path = root / "mesh.yaml"
    path.write_text(yaml.safe_dump(_mesh_doc()))
    config = load_config(path)
    authority = TokenAuthority.ensure(config.ca_dir, issuer=config.tokens.issuer)
    client_token = authority.issue(sub=EXTERNAL_SUBJECT, roles=["client"], audience=config.tokens.audience,
                                   ttl=3600)
    return config, client_token


class Relay(Echo):
    """Forwards the task to the first member of ``metadata["next"]``; answers with who it served (principal,
    chain length) and what the rest of the chain answered."""

    def __init__(self, node: MeshNode) -> None:
        self.node = node

    async def Invoke(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> agent_pb2.TaskResult:
        call = current_call()
        out = [agent_pb2.Part(text=f"{self.node.name} {call.principal} {len(call.chain)}")]
        nxt = request.metadata.get("next")
        if nxt:
            first, _, rest = nxt.partition(",")
            onward = agent_pb2.Task(id=request.id, input=request.input, metadata={"next": rest} if rest else {})
            res = await self.node.stub(first, agent_pb2_grpc.AgentStub).Invoke(onward)
            out.extend(res.output)
        return agent_pb2.TaskResult(task_id=request.id, status=agent_pb2.TASK_STATUS_COMPLETED, output=out)


# ----------------------------------------------------------------------------- end to end


def _task() -> agent_pb2.Task:
    return agent_pb2.Task(id="deleg-1", input=[agent_pb2.Part(text=TEXT)], metadata={"next": ",".join(AGENTS[1:])})


@dataclass
class _Running:
    config: MeshConfig
    client_token: str
    control: Any
    nodes: dict[str, MeshNode]
    exchange_ns: list[int]  # every timed exchange
    exchange_cpu_s: float = 0.0
    exchanges: int = 0

    @property
    def bridge(self) -> MeshNode:
        return self.nodes[BRIDGE]

    def flush(self) -> None:
        for node in self.nodes.values():
            node.sink.force_flush(5)
        self.control.sink.force_flush(5)

    async def exchange(self, n: int, *, record: bool = True) -> list[str]:
        """``n`` fresh transaction tokens for the client, one ``MeshNode.exchange`` each (timed)."""
        out = []
        cpu0 = time.process_time()
        for _ in range(n):
            t0 = time.perf_counter_ns()
            txn = await self.bridge.exchange(self.client_token, route="bench")
            if record:
                self.exchange_ns.append(time.perf_counter_ns() - t0)
            out.append(txn.token)
        self.flush()  # the control plane's span export belongs to the exchanges
        if record:
            self.exchange_cpu_s += time.process_time() - cpu0
            self.exchanges += n
        return out

    async def call(self, txn: str | None) -> agent_pb2.TaskResult:
        stub = self.bridge.stub(AGENTS[0], agent_pb2_grpc.AgentStub)
        res: agent_pb2.TaskResult
        if txn is None:
            res = await stub.Invoke(_task())
        else:
            with delegating(txn):
                res = await stub.Invoke(_task())
        return res


def _check_answer(res: agent_pb2.TaskResult, delegated: bool) -> None:
    """The chain really was three hops, delegated (the client's principal, chain 1, 2, 3) or not."""
    got = [p.text for p in res.output]
    if delegated:
        want = [f"{name} {EXTERNAL_SUBJECT} {i + 1}" for i, name in enumerate(AGENTS)]
    else:
        callers = (BRIDGE, *AGENTS[:-1])
        want = [f"{name} spiffe://{TRUST_DOMAIN}/agent/{caller} 0" for name, caller in zip(AGENTS, callers,
                                                                                             strict=True)]
    if got != want:
        raise RuntimeError(f"unexpected answer of the chain: {got} (wanted {want})")


METRICS = ("cpu", "loop_cpu", "wall")  # per call: process CPU, event-loop thread CPU, wall time (us)


async def _round(m: _Running, calls: int, same_txn: str) -> dict[str, Any]:
    """``calls`` steps; each step makes one call of every variant (the order rotating), each in its own
    window of process CPU, event-loop thread CPU and wall time. The transaction tokens of the
    new-transaction calls are exchanged before the round, and the audit sinks flushed, outside the windows."""
    fresh = await m.exchange(calls)
    gc.collect()
    m.flush()
    samples: dict[str, dict[str, list[float]]] = {v: {k: [] for k in METRICS} for v in VARIANTS}
    busy0, round_cpu0, round_wall0 = system_busy_seconds(), time.process_time(), time.perf_counter()
    for i in range(calls):
        txns = {"undelegated": None, "same_transaction": same_txn, "new_transaction": fresh[i]}
        for variant in VARIANTS[i % 3:] + VARIANTS[:i % 3]:  # each variant first, second and third in turn
            c0, t0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
            await m.call(txns[variant])
            w1, c1, t1 = time.perf_counter(), time.process_time(), time.thread_time()
            out = samples[variant]
            out["cpu"].append((c1 - c0) * 1e6)
            out["loop_cpu"].append((t1 - t0) * 1e6)
            out["wall"].append((w1 - w0) * 1e6)
    m.flush()  # what the exporter threads still had: counted in the round, not in a window
    round_cpu, round_wall = time.process_time() - round_cpu0, time.perf_counter() - round_wall0
    windows = sum(sum(samples[v]["cpu"]) for v in VARIANTS) / 1e6
    return {
        "calls": calls,
        "cpu_us_per_call": {v: statistics.mean(samples[v]["cpu"]) for v in VARIANTS},
        # process CPU of the round outside the calls' windows (the final flush, the loop between calls)
        "unattributed_cpu_us_per_step": (round_cpu - windows) / calls * 1e6,
        "background_cores": max(0.0, system_busy_seconds() - busy0 - round_cpu) / round_wall,
        "samples": samples,
    }


async def _end_to_end(workdir: Path, size: Size, log: Callable[[str], object]) -> dict[str, Any]:
    config, client_token = create_delegation_mesh(workdir / "delegation-mesh")
    quiet = logging.getLogger("agentmesh")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    control = await start_control(config)
    m = _Running(config, client_token, control, {}, [])
    servers = []
    try:
        for name in (*AGENTS, BRIDGE):
            node = MeshNode(config, name)
            m.nodes[name] = node
            await node.start(timeout=10)
            if name in AGENTS:
                server = node.server()
                server.add(agent_pb2_grpc.add_AgentServicer_to_server, Relay(node), "agentmesh.v1.Agent")
                await server.start(node.address)
                servers.append(server)
        # warm-up: connections, tokens, caches, and a check that each variant is what it claims to be
        _check_answer(await m.call(None), delegated=False)
        (same_txn,) = await m.exchange(1, record=False)
        _check_answer(await m.call(same_txn), delegated=True)
        (fresh,) = await m.exchange(1, record=False)
        _check_answer(await m.call(fresh), delegated=True)
        await _round(m, size.warmup, same_txn)
        m.exchange_ns.clear()
        m.exchange_cpu_s, m.exchanges = 0.0, 0
        rounds = []
        for i in range(size.rounds):
            r = await _round(m, size.calls, same_txn)
            rounds.append(r)
            c = r["cpu_us_per_call"]
            log(f"  round {i + 1}/{size.rounds}: process CPU us per call " + ", ".join(
                f"{v} {c[v]:.0f}" for v in VARIANTS) + f"; background {r['background_cores']:.2f} cores")
        return _summarise(rounds, m)
    finally:
        for node in m.nodes.values():  # clients first: no call is cut by a server going away
            await node.close()
        for server in servers:
            await server.stop(0)
        await control.stop(0)
        control.sink.shutdown(2)
        quiet.setLevel(level)


def _bootstrap_ci(blocks: Sequence[Sequence[float]], stat: Callable[[list[float]], float], *,
                  resamples: int = 400, seed: int = 10) -> tuple[float, float]:
    """A 95 % confidence interval of ``stat`` over all the values of ``blocks`` (the rounds), by resampling
    whole rounds: what other processes did to neighbouring calls is not taken for independent."""
    rng = random.Random(seed)
    out = sorted(stat([x for b in rng.choices(blocks, k=len(blocks)) for x in b]) for _ in range(resamples))
    return out[int(0.025 * resamples)], out[int(0.975 * resamples) - 1]


def _summarise(rounds: list[dict[str, Any]], m: _Running) -> dict[str, Any]:
    calls = {v: {k: [x for r in rounds for x in r["samples"][v][k]] for k in METRICS} for v in VARIANTS}
    steps = [r["calls"] for r in rounds]
    variants: dict[str, dict[str, Any]] = {}
    for v in VARIANTS:
        c, wall = calls[v], sorted(calls[v]["wall"])
        variants[v] = {
            "calls": len(wall),
            "cpu_us_per_call": statistics.fmean(c["cpu"]),  # means: everything the calls cost
            "loop_cpu_us_per_call": statistics.fmean(c["loop_cpu"]),
            "wall_us_per_call": statistics.fmean(c["wall"]),
            "cpu_us_median": statistics.median(c["cpu"]),
            "p50_ms": percentile(wall, 0.5) / 1e3,
            "p90_ms": percentile(wall, 0.9) / 1e3,
        }
    added: dict[str, dict[str, Any]] = {}
    base = calls["undelegated"]
    for v in VARIANTS[1:]:
        # per step: this variant's call minus the undelegated call of the same step, per hop
        diff = {k: [(d - u) / HOPS for d, u in zip(calls[v][k], base[k], strict=True)] for k in METRICS}
        ends = list(itertools.accumulate(steps))
        blocks = [diff["cpu"][end - n:end] for n, end in zip(steps, ends, strict=True)]  # per round
        low, high = _bootstrap_ci(blocks, statistics.median)
        mean_low, mean_high = _bootstrap_ci(blocks, statistics.fmean)
        added[v] = {
            "cpu_us": statistics.median(diff["cpu"]),  # the headline: median of the paired differences
            "cpu_us_ci95": [low, high],
            # the mean includes rare costs (GC, audit export batches) and the noise they bring
            "cpu_us_mean": statistics.fmean(diff["cpu"]),
            "cpu_us_mean_ci95": [mean_low, mean_high],
            "loop_cpu_us": statistics.median(diff["loop_cpu"]),
            "wall_us": statistics.median(diff["wall"]),
            "cpu_us_per_round": [(r["cpu_us_per_call"][v] - r["cpu_us_per_call"]["undelegated"]) / HOPS
                                 for r in rounds],
            "cpu_ratio_vs_undelegated": variants[v]["cpu_us_per_call"] / variants["undelegated"]["cpu_us_per_call"],
        }
    ex = sorted(m.exchange_ns)
    exchange = {
        "exchanges": len(ex),
        "median_ms": statistics.median(ex) / 1e6 if ex else None,
        "p90_ms": percentile(ex, 0.9) / 1e6 if ex else None,
        "max_ms": ex[-1] / 1e6 if ex else None,
        # both sides (the bridge's client chain and the control plane) are in this process
        "cpu_us_per_exchange": m.exchange_cpu_s / m.exchanges * 1e6 if m.exchanges else None,
    }
    for r in rounds:
        del r["samples"]
    return {
        "variants": variants,
        "added_per_hop": added,
        "exchange": exchange,
        "background_cores": statistics.median(r["background_cores"] for r in rounds),
        "unattributed_cpu_us_per_step": statistics.median(r["unattributed_cpu_us_per_step"] for r in rounds),
        "rounds_detail": rounds,
    }


# ----------------------------------------------------------------------------- micro-benchmarks


def _time_pool(fn: Callable[[Any], object], items: Sequence[Any], batches: int = MICRO_BATCHES) -> float:
    """Microseconds per op of ``fn`` over ``items`` never used before: the median of ``batches`` batches."""
    size = len(items) // batches
    per_op = []
    for b in range(batches):
        chunk = items[b * size:(b + 1) * size]
        t0 = time.perf_counter_ns()
        for item in chunk:
            fn(item)
        per_op.append((time.perf_counter_ns() - t0) / len(chunk))
    return statistics.median(per_op) / 1e3


@dataclass(frozen=True, slots=True)
class _Member:
    sid: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    der: bytes
    pem: bytes
    thumbprint: str


def _micro(config: MeshConfig, client_token: str, size: Size) -> dict[str, float]:
    authority = TokenAuthority.load(config.ca_dir, issuer=config.tokens.issuer)
    verifier = verifier_from_config(config.tokens, KeySet.from_authority(authority))
    snapshot = trust_snapshot(config)
    td = config.trust_domain

    def certificate(cert: x509.Certificate, presented: tuple[x509.Certificate, ...]) -> PeerIdentity:
        return check_certificate(cert, snapshot.issuers, td, time.time())

    checks = Checks(verifier, TxnVerifier(verifier, mesh_issuer=config.tokens.issuer, trust_domain=td),
                    LinkVerifier(certificate), config.tokens.issuer, config.tokens.max_delegation_depth,
                    config.revocation, config.tokens.leeway)
    members: dict[str, _Member] = {}
    for name in (BRIDGE, *AGENTS):
        ident = AgentIdentity(config.identity_dir(name), td)
        files = ident.files
        key = serialization.load_pem_private_key(files.key, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        members[name] = _Member(str(config.spiffe_id(name)), key, files.leaf, cert_der(files.leaf), ident.leaf_pem,
                                ident.thumbprint)
    peer_name, me_name = AGENTS[-2], AGENTS[-1]  # the last hop: summarizer -> validator
    peer = peer_identity_from_pem(members[peer_name].pem, td, time.time())
    me = members[me_name].sid
    own = authority.issue(sub=peer.uri, roles=[peer_name], audience=config.tokens.audience, ttl=3600,
                          cnf_thumbprint=members[peer_name].thumbprint)
    subject = verifier.verify(client_token)
    principal = principal_of(subject, config.tokens.issuer)
    hops = list(zip((BRIDGE, *AGENTS[:-1]), AGENTS, strict=True))
    ttl = config.tokens.link_ttl

    def new_txn() -> str:
        now = time.time()
        g = grant(subject, principal, requester=members[BRIDGE].sid, trust_domain=td, scope="", route="bench",
                  rctx={}, now=now, ttl=config.tokens.txn_ttl)
        return sign_txn_token(authority.key, authority.algorithm, authority.kid, authority.issuer, g.claims, iat=now,
                              exp=g.expires_at)

    def new_link(txn: str, signer: str, aud: str, ph: str | None) -> str:
        s = members[signer]
        return sign_link(s.key, s.der, signer=s.sid, aud=members[aud].sid, tth=token_hash(txn), ph=ph,
                         now=time.time(), ttl=ttl)

    def new_chain() -> tuple[str, str]:
        txn = new_txn()
        links: list[str] = []
        for signer, aud in hops:
            links.append(new_link(txn, signer, aud, token_hash(links[-1]) if links else None))
        return txn, ",".join(links)

    n = size.micro_batch * MICRO_BATCHES
    delegated_pool = [new_chain() for _ in range(n)]
    cold_pool = [new_chain() for _ in range(n)]
    txn_pool = [new_txn() for _ in range(n)]
    link_txn = new_txn()
    link_pool = [new_link(link_txn, BRIDGE, AGENTS[0], None) for _ in range(2 * n)]
    link_cert_pool, link_pool = link_pool[n:], link_pool[:n]
    same_txn, same_links = new_chain()

    def caller(own_token: str, txn: str | None, links: str | None) -> object:
        return verify_caller(peer, own_token, txn, links, me=me, checks=checks, snapshot=snapshot, now=time.time())

    def cold(chain: tuple[str, str]) -> object:
        checks.links.clear_cache()
        verifier.clear_cache()
        return caller(own, *chain)

    def direct_miss() -> object:
        verifier.clear_cache()
        return caller(own, None, None)

    def link_cert(link: str) -> object:
        checks.links.clear_cache()
        return checks.links.verify(link)

    first = members[BRIDGE]
    signer = HopSigner(first.key, first.cert, first.sid, ttl=ttl, clock=time.time)
    caller(own, same_txn, same_links)  # warms the caches: own token, certificates, the same transaction
    secs = size.micro_seconds
    out = {
        "verify_caller_direct_hit": time_op(lambda: caller(own, None, None), secs),
        "verify_caller_direct_miss": time_op(direct_miss, secs),
        "verify_caller_delegated_hit": time_op(lambda: caller(own, same_txn, same_links), secs),
        "verify_caller_delegated_miss": _time_pool(lambda c: caller(own, *c), delegated_pool),
        "verify_caller_delegated_cold": _time_pool(cold, cold_pool),
    }
    caller(own, same_txn, same_links)  # the caches again, after the cold runs cleared them
    out.update({
        "sign_link": time_op(lambda: new_link(link_txn, BRIDGE, AGENTS[0], None), secs),
        "hop_link_reused": time_op(lambda: signer.link(same_txn, (), members[AGENTS[0]].sid), secs),
        "link_verify_miss": _time_pool(checks.links.verify, link_pool),
        "link_verify_miss_cert": _time_pool(link_cert, link_cert_pool),
        "link_verify_hit": time_op(lambda: checks.links.verify(link_pool[0]), secs),
        "txn_verify_miss": _time_pool(checks.txns.verify, txn_pool),
        "txn_verify_hit": time_op(lambda: checks.txns.verify(txn_pool[0]), secs),
    })
    return out


# ----------------------------------------------------------------------------- the whole part


def run_delegation(workdir: Path, *, mode: str = "full", size: Size | None = None,
                   log: Callable[[str], object] = print) -> dict[str, Any]:
    """``mode``: a key of :data:`SIZES` ("full" or "quick"); ``size``: other sizes than the mode's."""
    size = size or SIZES[mode]
    started = time.perf_counter()
    try:
        log(f"  end to end: {size.rounds} rounds of {size.calls} calls of each variant, interleaved call by call ...")
        e2e = asyncio.run(_end_to_end(workdir, size, log))
        e2e_s = time.perf_counter() - started
        log(f"  micro-benchmarks (end to end took {e2e_s:.1f} s) ...")
        config, client_token = create_delegation_mesh(workdir / "delegation-micro-mesh")
        busy0, cpu0, wall0 = system_busy_seconds(), time.process_time(), time.perf_counter()
        micro = _micro(config, client_token, size)
        micro_background = max(0.0, system_busy_seconds() - busy0 - (time.process_time() - cpu0)) \
            / (time.perf_counter() - wall0)
    except Exception as e:
        return {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
    steady = e2e["added_per_hop"]["same_transaction"]
    low, high = steady["cpu_us_ci95"]
    verdict = "met" if high < TARGET_US_PER_HOP else "not met" if low >= TARGET_US_PER_HOP else "inconclusive"
    return {
        "status": "ok",
        "how": "in-process mesh over real sockets (control plane + 4 MeshNodes), sequential calls "
               "bridge -> ingestor -> summarizer -> validator interleaved call by call; per call process CPU "
               "(all threads), event-loop thread CPU and wall time; added per hop = (delegated - undelegated) / 3 "
               "per round, median of rounds; new_transaction's exchanges before each round, outside the windows",
        "hops": HOPS,
        "rounds": size.rounds,
        "calls_per_round": size.calls,  # of each variant
        **e2e,
        "micro_us": micro,
        "micro_descriptions": MICRO,
        "micro_background_cores": micro_background,  # other processes' CPU while the micro-benchmarks ran
        "target_us_per_hop": TARGET_US_PER_HOP,
        "target_met": steady["cpu_us"] < TARGET_US_PER_HOP,  # the point estimate
        "target_verdict": verdict,  # with its confidence interval: met / not met / inconclusive
        "duration_s": round(time.perf_counter() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.delegation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default: the mode's)")
    p.add_argument("--calls", type=int, help="calls per round of one variant (default: the mode's)")
    p.add_argument("--json", type=Path, help="also write the results to this file")
    a = p.parse_args(argv)
    mode = "quick" if a.quick else "full"
    changes = {k: v for k, v in (("rounds", a.rounds), ("calls", a.calls)) if v}
    from benchmarks import report

    with tempfile.TemporaryDirectory(prefix="agentmesh-delegation-") as tmp:
        print("delegation ...", flush=True)
        result = run_delegation(Path(tmp), mode=mode, size=dataclasses.replace(SIZES[mode], **changes),
                                log=lambda msg: print(msg, flush=True))
    print()
    report.print_delegation(result)
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
