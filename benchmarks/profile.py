"""Profiles variant 3 (the whole chain) with py-spy while the closed-loop load runs: the agent
(server chain) and the load generator (client chain through ``MeshNode.stub``).

    python -m benchmarks.profile [--seconds 10] [--no-gil] [--native] [--out /tmp/agentmesh-profile]
    python -m benchmarks.profile --bridge          # variant 5: the REST bridge, its agent, the control plane; wrk
    python -m benchmarks.profile --bridge --txn-reuse   # variant 7: the same, transaction tokens reused
    python -m benchmarks.profile --ablate          # server CPU per call, the chain grown stage by stage

Writes py-spy's collapsed stacks (``<process>.txt``: open them in speedscope or flamegraph.pl) and
prints, per process: the share of samples by chain component (a sample goes to the first
component whose function is on its stack), self time by area and by function, and the
inclusive share of every agentmesh function. By default only samples holding the GIL count
(``--gil``), so shares are shares of Python CPU time.

``--ablate`` measures instead of sampling: variant 2, then the server chain grown one stage at a
time, then the whole chain with parts of its work switched off (all servers up at once,
interleaved rounds, medians), so each stage's server CPU per call reads off as a difference.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.echo import http_body
from benchmarks.httpload import HttpLoad, HttpTarget
from benchmarks.loadgen import GrpcTarget, LoadGenerator, LoadgenSpec
from benchmarks.meshdir import AGENT, BenchMesh, create_mesh, mesh_variant
from benchmarks.procs import Processes, ServerProcess
from benchmarks.settings import BRIDGE_TXN_REUSE

__all__ = ["COMPONENTS", "main", "summarize"]

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
AREAS = (  # (area, substring of the file path), first match wins
    ("agentmesh", "agentmesh/"),
    ("benchmarks", "benchmarks/"),
    ("grpc (aio, cython)", "grpc/_cython"),
    ("grpc", "grpc/"),
    ("opentelemetry", "opentelemetry/"),
    ("starlette / uvicorn", "starlette/"),
    ("starlette / uvicorn", "uvicorn/"),
    ("protobuf", "google/protobuf"),
    ("asyncio", "asyncio/"),
    ("cryptography", "cryptography/"),
    ("redis", "redis/"),
    ("json", "json/"),
)
#: (function name on the stack, component); the first rule with a match names a sample's component
COMPONENTS = (
    ("ExportQueue._run", "audit export threads (span_record, redaction, json, write; one per exporter)"),
    ("AuditMetrics._run", "audit metrics thread (OTel counter + histogram per call)"),
    ("AuditStage.start", "server: AuditStage.start (traceparent, span, current context)"),
    ("AuditStage.finish", "server: AuditStage.finish (set_attributes, span.end, metrics)"),
    ("AuditStage.open", "server: AuditStage.open (CallContext)"),
    ("AdmissionStage.before", "server: AdmissionStage.before (certificate, token, policy)"),
    ("RateLimitStage.before", "server: RateLimitStage.before"),
    ("PayloadGuardStage.inspect", "server: PayloadGuardStage.inspect"),
    ("Echo.Invoke", "the handler (Echo.Invoke)"),
    ("ServerChain.intercept_service", "server: chain plumbing"),
    ("rewrap.<locals>", "server: chain plumbing"),
    ("ServerChain._serve", "server: chain plumbing"),
    ("ClientSteps._build", "client: steps (metadata, token, start_span, inject)"),
    ("ClientSteps.end_when_done", "client: ending the span in the done callback"),
    ("_ChainedCallable.", "client: chained multicallable plumbing"),  # any of its methods: _start, _deferred, ...
    ("MeshNode.stub", "client: MeshNode.stub (channel lookup, stub object)"),
    ("InterceptedUnaryUnaryCall", "grpc.aio client interceptor machinery"),
    ("UnaryUnaryCall", "grpc.aio call objects"),
    ("_handle_rpc", "grpc.aio server call handling"),
    ("gateway.py", "bridge: gateway (auth, transcode, call)"),
    ("middleware.py", "bridge: middleware"),
    ("starlette/", "starlette / uvicorn"),
    ("uvicorn/", "starlette / uvicorn"),
    ("_round.<locals>.caller", "load generator loop"),
    ("asyncio/", "asyncio event loop"),
)


def _frames(stack: str) -> list[tuple[str, str]]:
    """(function, file) of each frame of one collapsed stack, outermost first."""
    out = []
    for raw in stack.split(";"):
        m = _FRAME.match(raw.strip())
        out.append((m.group("func"), m.group("file")) if m else (raw.strip(), ""))
    return out


def _area(file: str) -> str:
    return next((name for name, part in AREAS if part in file), "other (stdlib, native)" if file else "native")


def _load(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((_frames(stack), int(count)))
    return stacks


def _component(frames: list[tuple[str, str]]) -> str:
    text = ";".join(f"{file}:{func}" for func, file in frames)
    return next((label for needle, label in COMPONENTS if needle in text), "other")


def summarize(path: Path, title: str, top: int = 20) -> str:
    stacks = _load(path)
    total = sum(c for _, c in stacks) or 1
    comp: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    self_area: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for frames, count in stacks:
        if not frames:
            continue
        comp[_component(frames)] += count
        func, file = frames[-1]
        self_fn[f"{file}:{func}"] += count
        self_area[_area(file)] += count
        for key in {f"{f}:{fn}" for fn, f in frames if "agentmesh/" in f}:
            incl[key] += count
    lines = [f"== {title}: {total} samples ({path})", "by chain component:"]
    lines += [f"  {n / total:6.1%}  {label}" for label, n in comp.most_common()]
    lines.append("self time by area:")
    lines += [f"  {n / total:6.1%}  {area}" for area, n in self_area.most_common()]
    lines.append(f"self time, top {top} functions:")
    lines += [f"  {n / total:6.1%}  {fn}" for fn, n in self_fn.most_common(top)]
    lines.append(f"inclusive time of agentmesh functions, top {top}:")
    lines += [f"  {n / total:6.1%}  {fn}" for fn, n in incl.most_common(top)]
    return "\n".join(lines)


def _spy(pid: int, out: Path, seconds: float, rate: int, flags: Sequence[str]) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
                             "--format", "raw", "--nolineno", "--output", str(out), *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _record(targets: dict[str, int], out: Path, seconds: float, rate: int, flags: Sequence[str]) -> None:
    spies = [_spy(pid, out / f"{name}.txt", seconds, rate, flags) for name, pid in targets.items()]
    for spy in spies:
        _, err = spy.communicate(timeout=seconds + 60)
        if spy.returncode != 0:
            print(err.decode(errors="replace"), file=sys.stderr)


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def _start_mesh(work: Path, extra_agents: Sequence[str] = ()) -> tuple[BenchMesh, Processes, str]:
    mesh = create_mesh(work / "mesh", extra_agents=extra_agents)
    procs = Processes(work)
    cfg = str(mesh.config_path)
    procs.python("control", "control", ["--config", cfg], _port(mesh.config.control.address)).wait_listening()
    return mesh, procs, cfg


def _in_workdir(run: Callable[[Path], None]) -> None:
    work = Path(tempfile.mkdtemp(prefix="agentmesh-profile-"))
    try:
        run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def profile_mesh(a: argparse.Namespace, flags: Sequence[str]) -> None:
    def run(work: Path) -> None:
        mesh, procs, cfg = _start_mesh(work)
        gen = None
        try:
            agent = procs.python("agent", "agent", ["--config", cfg, "--name", AGENT], _port(mesh.address(AGENT)))
            agent.wait_listening()
            gen = LoadGenerator(LoadgenSpec(cfg, {"mesh": GrpcTarget("mesh", agent=AGENT)}))
            gen.run("mesh", 1.0, a.concurrency)  # warm-up
            with ThreadPoolExecutor(1) as pool:
                load = pool.submit(gen.run, "mesh", a.seconds + 2, a.concurrency, [agent.pid])
                time.sleep(1.0)
                _record({"server": agent.pid, "client": gen.pid}, a.out, a.seconds, a.rate, flags)
                r = load.result()
            print(f"load while sampling: {r.rps:.0f} rps, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms, "
                  f"server {sum(r.server_cpu_s.values()) / max(1, r.calls) * 1e6:.0f} us CPU/call, "
                  f"client {r.client_cpu_s / max(1, r.calls) * 1e6:.0f} us CPU/call, errors {r.errors}")
            print(summarize(a.out / "server.txt", "server (agent, whole server chain)"))
            print(summarize(a.out / "client.txt", "client (load generator, MeshNode.stub + client chain)"))
        finally:
            if gen is not None:
                gen.close()
            procs.stop_all()

    _in_workdir(run)


def profile_bridge(a: argparse.Namespace, flags: Sequence[str]) -> None:
    def run(work: Path) -> None:
        mesh, procs, cfg = _start_mesh(work)
        try:
            agent = procs.python("agent", "agent", ["--config", cfg, "--name", AGENT], _port(mesh.address(AGENT)))
            bridge_cfg, listen = cfg, mesh.bridge_listen
            if a.txn_reuse:  # variant 7: the bridge reuses a transaction token per principal and scope
                path, listen = mesh_variant(mesh, "txn-reuse", {"txn_reuse": BRIDGE_TXN_REUSE})
                bridge_cfg = str(path)
            bridge = procs.python("bridge", "bridge", ["--config", bridge_cfg, "--listen", listen], _port(listen))
            agent.wait_listening()
            bridge.wait_listening()
            target = HttpTarget(f"http://{listen}/v1/agents/{AGENT}/agentmesh.v1.Agent/Invoke",
                                http_body(), mesh.client_token)
            http = HttpLoad(work)
            http.run(target, 1, a.concurrency)  # warm-up
            with ThreadPoolExecutor(1) as pool:
                load = pool.submit(http.run, target, a.seconds + 2, a.concurrency)
                time.sleep(1.0)
                _record({"bridge": bridge.pid, "agent": agent.pid, "control": procs.started[0].pid}, a.out,
                        a.seconds, a.rate, flags)
                r = load.result()
            print(f"load while sampling ({http.tool}): {r.rps:.0f} rps, p50 {r.p50_ms:.2f} ms, "
                  f"p99 {r.p99_ms:.2f} ms, errors {r.errors}")
            print(summarize(a.out / "bridge.txt", "REST bridge (HTTP in, client chain, gRPC out)"))
            print(summarize(a.out / "agent.txt", "agent behind the bridge (whole server chain)"))
            print(summarize(a.out / "control.txt", "control plane (a transaction token per request, unless reused)"))
        finally:
            procs.stop_all()

    _in_workdir(run)


ABLATION: tuple[tuple[str, list[str]], ...] = (  # (label, serve.py agent arguments)
    ("agent process, no interceptors", ["--stages", "0"]),
    ("chain: audit stage only", ["--stages", "1"]),
    ("+ admission (certificate, token, policy; decisions reused)", ["--stages", "2"]),
    ("+ rate limit", ["--stages", "3"]),
    ("+ payload guard (= variant 3)", []),
    ("variant 3, spans not exported", ["--tweak", "no-export"]),
    ("variant 3, guard without patterns", ["--tweak", "no-guard-patterns"]),
)


def ablate(rounds: int, seconds: float, concurrency: int) -> None:
    names = [f"abl-{i}" for i in range(len(ABLATION))]

    def run(work: Path) -> None:
        mesh, procs, cfg = _start_mesh(work, names)
        gen = None
        try:
            mtls_addr = f"127.0.0.1:{mesh.mtls_port}"
            servers: dict[str, ServerProcess] = {
                "v2": procs.python("grpc-mtls", "grpc-mtls", ["--config", cfg, "--listen", mtls_addr], mesh.mtls_port)}
            for name, (_, args) in zip(names, ABLATION, strict=True):
                servers[name] = procs.python(name, "agent", ["--config", cfg, "--name", name, *args],
                                             _port(mesh.address(name)))
            for proc in servers.values():
                proc.wait_listening()
            targets = {"v2": GrpcTarget("mtls", mtls_addr, AGENT), **{n: GrpcTarget("mesh", agent=n) for n in names}}
            gen = LoadGenerator(LoadgenSpec(cfg, targets))
            for key in targets:
                gen.run(key, 0.5, concurrency)
            results: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in targets}
            for _ in range(rounds):
                for key, proc in servers.items():
                    r = gen.run(key, seconds, concurrency, [proc.pid])
                    results[key].append((r.rps, r.p99_ms, r.server_cpu_s[proc.pid] / r.calls * 1e6,
                                         r.client_cpu_s / r.calls * 1e6))
            labels = {"v2": "variant 2 (mTLS, no interceptors)", **dict(zip(names, (lbl for lbl, _ in ABLATION),
                                                                             strict=True))}
            print(f"{'server':<40} {'rps':>7} {'p99 ms':>7} {'srv us/call':>12} {'delta':>7} {'cli us/call':>12}")
            prev = None
            for key in targets:
                rps, p99, srv, cli = (statistics.median(col) for col in zip(*results[key], strict=True))
                delta = "" if prev is None else f"{srv - prev:+.0f}"
                print(f"{labels[key]:<40} {rps:7.0f} {p99:7.2f} {srv:12.0f} {delta:>7} {cli:12.0f}")
                if key in ("v2", *names[:-2]):  # the tweaked rows compare with the whole chain
                    prev = srv
        finally:
            if gen is not None:
                gen.close()
            procs.stop_all()

    _in_workdir(run)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="sampling time")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--no-gil", action="store_true", help="count every sample, not only those holding the GIL")
    p.add_argument("--native", action="store_true", help="include native (Cython/C) frames")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "agentmesh-profile")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--bridge", action="store_true", help="profile variant 5 (bridge + agent) under wrk")
    p.add_argument("--txn-reuse", action="store_true",
                   help=f"with --bridge: variant 7 (bridge.txn_reuse {BRIDGE_TXN_REUSE}) instead of 5")
    mode.add_argument("--ablate", action="store_true", help="measure the chain stage by stage instead of sampling")
    p.add_argument("--rounds", type=int, default=3, help="--ablate: interleaved rounds")
    p.add_argument("--round-seconds", type=float, default=2.0, help="--ablate: length of one round")
    a = p.parse_args(argv)
    if a.ablate:
        ablate(a.rounds, a.round_seconds, a.concurrency)
        return 0
    a.out.mkdir(parents=True, exist_ok=True)
    flags = [f for f, on in (("--native", a.native), ("--gil", not a.no_gil)) if on]
    (profile_bridge if a.bridge else profile_mesh)(a, flags)
    return 0


if __name__ == "__main__":
    sys.exit(main())
