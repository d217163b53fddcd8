"""The variant phase: every server of the variants in its own process, the gRPC load generator in another and
wrk (or the httpx fallback) for the HTTP variants; a warm-up, then interleaved rounds A B C ... A B C ...,
medians reported. ``start_servers`` is shared with the fixed-rate phase (``fixedrate.py``)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.echo import http_body
from benchmarks.httpload import HttpLoad, HttpTarget
from benchmarks.loadgen import GrpcTarget, LoadGenerator, LoadgenSpec, RoundResult
from benchmarks.meshdir import AGENT, REDIS_AGENT, BenchMesh, create_mesh, free_port, mesh_variant
from benchmarks.procs import (
    Processes,
    ServerProcess,
    children_cpu_seconds,
    cpu_seconds,
    redis_binary,
    start_redis,
    system_busy_seconds,
)
from benchmarks.settings import BRIDGE_TXN_REUSE, CONTROL_VARIANTS, GATEWAY_PATH, GATEWAY_VARIANTS, VARIANTS, Preset

__all__ = ["Bench", "cpu_of", "run_variants", "start_servers"]

#: candidate Invoke routes of the REST bridge, tried when its OpenAPI document names none
BRIDGE_CANDIDATES = ("/v1/agents/{agent}/agentmesh.v1.Agent/Invoke", "/v1/agents/{agent}/invoke",
                     "/v1/agents/{agent}:invoke", "/agents/{agent}/invoke",
                     "/v1/{agent}/agentmesh.v1.Agent/Invoke", "/{agent}/agentmesh.v1.Agent/Invoke")


def log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------- the variants


@dataclasses.dataclass
class Bench:
    """The servers and clients of the variant phase."""

    mesh: BenchMesh
    procs: Processes
    servers: dict[int, list[ServerProcess]] = dataclasses.field(default_factory=dict)
    skipped: dict[int, tuple[str, str]] = dataclasses.field(default_factory=dict)  # n -> (status, reason)
    grpc_targets: dict[int, GrpcTarget] = dataclasses.field(default_factory=dict)
    http_targets: dict[int, HttpTarget] = dataclasses.field(default_factory=dict)
    bridges: dict[int, str] = dataclasses.field(default_factory=dict)  # bridge variant -> its listen address

    def skip(self, n: int, reason: str, status: str = "skipped") -> None:
        self.skipped[n] = (status, reason)
        log(f"  variant {n} {status}: {reason}")


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def _bridge_importable() -> str | None:
    """None if agentmesh.bridge offers serve() and create_app(); else why not."""
    try:
        if importlib.util.find_spec("agentmesh.bridge") is None:
            return "agentmesh.bridge is not importable yet"
        import agentmesh.bridge as bridge
    except Exception as e:
        return f"agentmesh.bridge is not importable yet ({type(e).__name__}: {e})"
    missing = [name for name in ("serve", "create_app") if not hasattr(bridge, name)]
    if missing:
        return f"agentmesh.bridge has no {' / '.join(missing)} yet"
    return None


def _post(url: str, body: bytes, token: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # loopback only
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _bridge_paths(base: str, first: Sequence[str] = ()) -> list[str]:
    """Invoke routes of the bridge: ``first`` (another bridge's route), AGENTMESH_BENCH_BRIDGE_PATH, then its
    OpenAPI document, then guesses."""
    found: list[str] = list(first)
    env = os.environ.get("AGENTMESH_BENCH_BRIDGE_PATH")
    if env:
        found.append(env)
    for doc_path in ("/openapi.json", "/v1/openapi.json"):
        try:
            with urllib.request.urlopen(base + doc_path, timeout=5) as r:
                paths = json.loads(r.read()).get("paths", {})
        except (urllib.error.URLError, ValueError, OSError):
            continue
        for path, ops in paths.items():
            low = path.lower()
            if "post" in ops and "invoke" in low and "stream" not in low:
                found.append(path)
        break
    found.extend(BRIDGE_CANDIDATES)
    out = []
    for path in found:
        concrete = path
        while "{" in concrete:  # the one path parameter is the agent name
            start, end = concrete.index("{"), concrete.index("}")
            concrete = concrete[:start] + AGENT + concrete[end + 1:]
        if concrete not in out:
            out.append(concrete)
    return out


def _setup_bridge(b: Bench, n: int) -> None:
    base = f"http://{b.bridges[n]}"
    body = http_body()
    tried = []
    known = [t.url.removeprefix(f"http://{b.bridges[m]}") for m, t in b.http_targets.items() if m in b.bridges]
    for path in _bridge_paths(base, known):
        status, answer = _post(base + path, body, b.mesh.client_token)
        if 200 <= status < 300:
            b.http_targets[n] = HttpTarget(base + path, body, b.mesh.client_token)
            log(f"  bridge route (variant {n}): POST {path} -> {status}")
            return
        tried.append(f"{path}: {status} {answer[:120]!r}")
    b.skip(n, "no Invoke route of the bridge answered 2xx (set AGENTMESH_BENCH_BRIDGE_PATH); tried "
           + "; ".join(tried[:4]), "failed")


def _txn_reuse_config(b: Bench) -> Path | None:
    """Variant 7's mesh file (``bridge.txn_reuse`` set), or None after skipping 7 if this tree has no such key."""
    from agentmesh.config import BridgeConfig

    if "txn_reuse" not in {f.name for f in dataclasses.fields(BridgeConfig)}:
        b.skip(7, "this tree's bridge has no txn_reuse setting")
        return None
    try:
        path, listen = mesh_variant(b.mesh, "txn-reuse", {"txn_reuse": BRIDGE_TXN_REUSE})
    except Exception as e:
        b.skip(7, f"the mesh file with bridge.txn_reuse does not load ({type(e).__name__}: {e})", "failed")
        return None
    b.bridges[7] = listen
    return path


def start_servers(b: Bench, wanted: Sequence[int], stack: contextlib.ExitStack) -> None:
    mesh, procs = b.mesh, b.procs
    cfg = ["--config", str(mesh.config_path)]
    why = _bridge_importable() if 5 in wanted or 7 in wanted else None
    for n in (5, 7):
        if n in wanted and why:
            b.skip(n, why)
    reuse_config = _txn_reuse_config(b) if 7 in wanted and 7 not in b.skipped else None
    missing = [m for m in ("fastapi", "slowapi", "uvicorn") if importlib.util.find_spec(m) is None]
    for n in GATEWAY_VARIANTS:
        if n in wanted and missing:
            b.skip(n, f"{' / '.join(missing)} not installed (pip install -e '.[bench]')")
    redis_url = None
    if 4 in wanted:
        if redis_binary() is None:
            b.skip(4, "redis-server not installed (apt-get install redis-server)")
        else:
            redis_url, redis = stack.enter_context(start_redis(procs, free_port()))
            b.servers[4] = [redis]
    live = [n for n in wanted if n not in b.skipped]
    starting: list[tuple[list[int], ServerProcess]] = []
    control: ServerProcess | None = None
    if any(n in live for n in CONTROL_VARIANTS):
        control = procs.python("control", "control", cfg, _port(mesh.config.control.address))
        starting.append((list(CONTROL_VARIANTS), control))
    if 1 in live:
        addr = f"127.0.0.1:{mesh.insecure_port}"
        starting.append(([1], procs.python("grpc-insecure", "grpc-insecure", ["--listen", addr], mesh.insecure_port)))
        b.grpc_targets[1] = GrpcTarget("insecure", addr)
    mtls_addr = f"127.0.0.1:{mesh.mtls_port}"
    if 2 in live or 8 in live:  # variant 8's gateway forwards to variant 2's bare agent
        starting.append(([2, 8], procs.python("grpc-mtls", "grpc-mtls", [*cfg, "--listen", mtls_addr],
                                              mesh.mtls_port)))
        if 2 in live:
            b.grpc_targets[2] = GrpcTarget("mtls", mtls_addr, AGENT)
    if 9 in live:
        if importlib.util.find_spec("uvloop") is None:
            b.skip(9, "uvloop is not installed (pip install 'agentmesh[fast]')")
        else:
            port = free_port()
            addr = f"127.0.0.1:{port}"
            starting.append(([9], procs.python("grpc-mtls-uvloop", "grpc-mtls",
                                               [*cfg, "--listen", addr, "--uvloop"], port)))
            b.grpc_targets[9] = GrpcTarget("mtls", addr, AGENT)
    if any(n in live for n in (3, 5, 7)):
        echo = procs.python("agent-echo", "agent", [*cfg, "--name", AGENT], _port(mesh.address(AGENT)))
        starting.append(([3, 5, 7], echo))
        if 3 in live:
            b.grpc_targets[3] = GrpcTarget("mesh", agent=AGENT)
    if 4 in live:
        assert redis_url is not None
        echo_redis = procs.python("agent-echo-redis", "agent", [*cfg, "--name", REDIS_AGENT, "--redis", redis_url],
                                  _port(mesh.address(REDIS_AGENT)))
        starting.append(([4], echo_redis))
        b.grpc_targets[4] = GrpcTarget("mesh", agent=REDIS_AGENT)
    if 5 in live:
        b.bridges[5] = mesh.bridge_listen
        starting.append(([5], procs.python("bridge", "bridge", [*cfg, "--listen", mesh.bridge_listen],
                                           _port(mesh.bridge_listen))))
    if 7 in live:
        assert reuse_config is not None
        starting.append(([7], procs.python("bridge-txn-reuse", "bridge", ["--config", str(reuse_config), "--listen",
                                                                          b.bridges[7]], _port(b.bridges[7]))))
    if 6 in live:
        listen = f"127.0.0.1:{mesh.gateway_port}"
        starting.append(([6], procs.python("gateway", "gateway", [*cfg, "--listen", listen, "--public-key",
                                                                   str(mesh.gateway_public_key)], mesh.gateway_port)))
        b.http_targets[6] = HttpTarget(f"http://{listen}{GATEWAY_PATH.replace('{agent}', AGENT)}", http_body(),
                                       mesh.gateway_token)
    if 8 in live:  # after its upstream: the serving process first
        port = free_port()
        listen = f"127.0.0.1:{port}"
        starting.append(([8], procs.python("gateway-forward", "gateway-forward", [
            *cfg, "--listen", listen, "--public-key", str(mesh.gateway_public_key), "--upstream", mtls_addr], port)))
        b.http_targets[8] = HttpTarget(f"http://{listen}{GATEWAY_PATH.replace('{agent}', AGENT)}", http_body(),
                                       mesh.gateway_token)
    for users, proc in starting:
        try:
            proc.wait_listening()
        except RuntimeError as e:
            for n in users:
                if n in live and n not in b.skipped:
                    b.skip(n, f"{proc.name} did not start: {e}", "failed")
            continue
        if proc is control:
            continue
        for n in users:
            if n in live:
                b.servers.setdefault(n, []).insert(0, proc)  # the serving process first, redis after
    # The control plane is part of every mesh variant (3, 4, 5, 7): their members fetch and renew their tokens
    # there and stream trust data (revocations, keys) from it, and the bridge exchanges each request's client
    # token there for a transaction token (variant 5; variant 7 once per client and route per txn_reuse window).
    # A mesh cannot serve without it, so its CPU during a mesh variant's round is that variant's server CPU, as
    # its own process ("control" in server_cpu_us_per_call_by_process): for 3 and 4 its steady cost (trust polls,
    # token refreshes: little per call), for 5 the exchange per request. Counting it only for the bridge would
    # make the gRPC variants' figures incomparable with the bridge's, and counting it nowhere hid ~1.5-1.9 ms per
    # bridge request as "background". Variants 1, 2, 6 and 8 do not use it: during their rounds it is an idle server
    # of this harness like the others, counted in other_bench_cores, neither in their cost nor as background.
    if control is not None and control.popen.poll() is None:
        for n in CONTROL_VARIANTS:
            if n in b.servers and n not in b.skipped:
                b.servers[n].append(control)
    for n in list(b.grpc_targets):
        if n in b.skipped:
            del b.grpc_targets[n]
    for n in (5, 7):
        if n in live and n not in b.skipped:
            _setup_bridge(b, n)
    for n in GATEWAY_VARIANTS:
        if n in b.skipped:
            b.http_targets.pop(n, None)


def cpu_of(pids: Sequence[int]) -> dict[int, float]:
    """CPU seconds so far of those of ``pids`` still running."""
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError):  # exited (a failed server)
            out[pid] = cpu_seconds(pid)
    return out


def _round_entry(calls: int, errors: int, elapsed: float, p50: float, p99: float, cpu: dict[str, float],
                 client_cpu: float | None, busy: float, harness: float, own: float,
                 codes: dict[str, int] | None = None) -> dict[str, Any]:
    """One round's numbers. ``cpu``: this variant's servers' CPU seconds by process, over the load's window.
    The rest is over a window around the round, for the background: ``busy``: CPU seconds the whole machine
    used (minus wrk); ``harness``: every process of this harness (all servers, the gRPC load generator, this
    process); ``own``: of those, this variant's servers and (gRPC) load generator."""
    server_cpu = sum(cpu.values())
    background = max(0.0, busy - harness)
    return {
        "calls": calls, "errors": errors, "error_codes": codes or {}, "elapsed_s": elapsed,
        "rps": calls / elapsed if elapsed else 0.0, "p50_ms": p50, "p99_ms": p99,
        "server_cpu_us_per_call": server_cpu / calls * 1e6 if calls else None,
        "server_cpu_us_per_call_by_process": {k: v / calls * 1e6 for k, v in cpu.items()} if calls else {},
        "client_cpu_us_per_call": client_cpu / calls * 1e6 if calls and client_cpu is not None else None,
        # cores busy with anything but this harness's processes and wrk (other jobs on the machine)
        "background_cores": background / elapsed if elapsed else None,
        # cores used by this harness's processes that do not serve this variant (other variants' idle servers,
        # the idle gRPC load generator during HTTP rounds, this process)
        "other_bench_cores": max(0.0, harness - own) / elapsed if elapsed else None,
    }


def run_variants(workdir: Path, preset: Preset, wanted: Sequence[int], concurrency: int,
                 http: HttpLoad) -> dict[str, dict[str, Any]]:
    log(f"starting servers for variants {', '.join(map(str, wanted))} ...")
    mesh = create_mesh(workdir / "mesh")
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    b = Bench(mesh, Processes(logs))
    rounds: dict[int, list[dict[str, Any]]] = {n: [] for n in wanted}
    gen: LoadGenerator | None = None
    with contextlib.ExitStack() as stack:
        stack.callback(b.procs.stop_all)
        start_servers(b, wanted, stack)
        if b.grpc_targets:
            try:
                gen = LoadGenerator(LoadgenSpec(str(mesh.config_path),
                                                {VARIANTS[n].key: t for n, t in b.grpc_targets.items()}))
            except RuntimeError as e:
                for n in list(b.grpc_targets):
                    b.skip(n, f"the load generator did not start: {e}", "failed")
                b.grpc_targets.clear()
            else:
                stack.callback(gen.close)
        order = [n for n in wanted if n in b.grpc_targets or n in b.http_targets]

        def one_round(n: int, seconds: float) -> dict[str, Any]:
            procs = b.servers[n]
            own = {p.pid for p in procs} | ({gen.pid} if gen is not None and n in b.grpc_targets else set())
            watched = [p.pid for p in b.procs.started] + [os.getpid()] + ([gen.pid] if gen is not None else [])
            busy0, kids0 = system_busy_seconds(), children_cpu_seconds()
            all0 = cpu_of(watched)

            def window() -> tuple[float, float, float]:
                all1 = cpu_of(watched)
                busy = system_busy_seconds() - busy0 - (children_cpu_seconds() - kids0)  # minus wrk itself
                used = {pid: all1[pid] - all0[pid] for pid in all0 if pid in all1}
                return busy, sum(used.values()), sum(v for pid, v in used.items() if pid in own)

            if n in b.grpc_targets:
                assert gen is not None
                r: RoundResult = gen.run(VARIANTS[n].key, seconds, concurrency, [p.pid for p in procs])
                cpu = {p.name: r.server_cpu_s[p.pid] for p in procs}
                return _round_entry(r.calls, r.errors, r.elapsed, r.p50_ms, r.p99_ms, cpu, r.client_cpu_s,
                                    *window(), r.error_codes)
            before = {p.name: cpu_seconds(p.pid) for p in procs}
            h = http.run(b.http_targets[n], seconds, concurrency)
            cpu = {p.name: cpu_seconds(p.pid) - before[p.name] for p in procs}
            return _round_entry(h.calls, h.errors, h.elapsed, h.p50_ms, h.p99_ms, cpu, None, *window())

        log(f"warm-up ({preset.warmup:g} s per variant) ...")
        for n in order:
            w = one_round(n, preset.warmup)
            if w["calls"] == 0:
                b.skip(n, f"no successful call in the warm-up (errors: {w['error_codes'] or w['errors']}); "
                          f"see {logs}", "failed")
        order = [n for n in order if n not in b.skipped]
        for i in range(preset.rounds):
            for n in order:
                entry = one_round(n, preset.seconds)
                rounds[n].append(entry)
                log(f"  round {i + 1}/{preset.rounds} v{n} {VARIANTS[n].key:<21} {entry['rps']:8.0f} rps  "
                    f"p50 {entry['p50_ms']:6.2f} ms  p99 {entry['p99_ms']:6.2f} ms  "
                    f"server {entry['server_cpu_us_per_call'] or 0:5.0f} us/call  errors {entry['errors']}  "
                    f"background {entry['background_cores'] or 0:.2f} cores "
                    f"(+ idle bench {entry['other_bench_cores'] or 0:.2f})")
    out: dict[str, dict[str, Any]] = {}
    for n in wanted:
        status, reason = b.skipped.get(n, ("ok", None))
        out[VARIANTS[n].key] = report.aggregate_variant(n, rounds[n], status=status, reason=reason,
                                                        servers=[p.name for p in b.servers.get(n, [])])
    return out


