"""Where a member's CPU goes, measured in the real processes under load: per thread, and per part of the chains.

    python -m benchmarks.insitu [--rounds 4] [--seconds 3] [--concurrency 16]

Variant 2 (bare mTLS) and variant 3's agent (the whole chain) serve the closed-loop load generator in turns
(interleaved rounds). For each, the server's CPU per call is split by thread from ``/proc/<pid>/task``: the
event loop's (main) thread, the audit export threads, grpc's poller (a Python thread) and its native
threads. Then the chain's parts (``timing.py``: thread CPU of each part, inside the agent and the load
generator, every wrapper's own ~1-2 us included) per call. Read them against ``micro.py``'s in-process
figures: the same code costs 2-5x as much between gRPC's and the event loop's work.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import time
from collections import defaultdict
from pathlib import Path

from benchmarks.loadgen import GrpcTarget, LoadGenerator, LoadgenSpec
from benchmarks.meshdir import AGENT
from benchmarks.procs import thread_cpu_ns
from benchmarks.profile import _in_workdir, _port, _start_mesh
from benchmarks.timing import ENV

__all__ = ["main"]


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid``, keyed ``"<native id>:<kernel name>"``."""
    return {key: ns / 1e9 for key, ns in thread_cpu_ns(pid).items()}


def _label(key: str, names: dict[str, str], main: str) -> str:
    tid, comm = key.split(":", 1)
    if tid == main:
        return "event loop (main thread)"
    name = names.get(tid)
    if name is None:
        return f"native: {comm}"
    if name.startswith("audit-"):
        return "audit export threads"
    return f"python: {name}"  # (grpc's poller: "Thread-N (_poll_wrapper)")


def _dump(pid: int, where: Path) -> dict[str, object]:
    path = where / f"timing-{pid}.json"
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} wrote no timing dump")
        time.sleep(0.05)
    doc: dict[str, object] = json.loads(path.read_text())
    return doc


def _split(before: dict[str, float], after: dict[str, float], dump: dict[str, object], calls: int,
           into: dict[str, list[float]]) -> None:
    """Adds each named thread's CPU per call between ``before`` and ``after`` to ``into``."""
    names, main_tid = dump["threads"], str(dump["main"])
    assert isinstance(names, dict)
    per: dict[str, float] = defaultdict(float)
    for key, s in after.items():
        per[_label(key, names, main_tid)] += (s - before.get(key, 0.0)) / calls * 1e6
    for label, us in per.items():
        into[label].append(us)


def _print_threads(by_label: dict[str, list[float]]) -> None:
    for label, values in sorted(by_label.items(), key=lambda kv: -statistics.median(kv[1])):
        if statistics.median(values) >= 0.5:
            print(f"    {statistics.median(values):7.0f} us  {label}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.insitu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=16)
    a = p.parse_args(argv)

    def run(work: Path) -> None:
        where = work / "timing"
        where.mkdir()
        os.environ[ENV] = str(where)  # the servers and the load generator started from here inherit it
        mesh, procs, cfg = _start_mesh(work)
        gen = None
        try:
            mtls = f"127.0.0.1:{mesh.mtls_port}"
            agent = procs.python("agent", "agent", ["--config", cfg, "--name", AGENT], _port(mesh.address(AGENT)))
            servers = {2: procs.python("grpc-mtls", "grpc-mtls", ["--config", cfg, "--listen", mtls], mesh.mtls_port),
                       3: agent}
            for proc in servers.values():
                proc.wait_listening()
            targets = {"2": GrpcTarget("mtls", mtls, AGENT), "3": GrpcTarget("mesh", agent=AGENT)}
            gen = LoadGenerator(LoadgenSpec(cfg, targets))
            for n in servers:
                gen.run(str(n), 1.0, a.concurrency)
            by_thread: dict[int, dict[str, list[float]]] = {n: defaultdict(list) for n in servers}
            client_threads: dict[int, dict[str, list[float]]] = {n: defaultdict(list) for n in servers}
            total: dict[int, list[float]] = {n: [] for n in servers}
            client_total: dict[int, list[float]] = {n: [] for n in servers}
            rps: dict[int, list[float]] = {n: [] for n in servers}
            for _ in range(a.rounds):
                for n, proc in servers.items():
                    before, client_before = thread_cpu(proc.pid), thread_cpu(gen.pid)
                    r = gen.run(str(n), a.seconds, a.concurrency, [proc.pid])
                    after, client_after = thread_cpu(proc.pid), thread_cpu(gen.pid)
                    _split(before, after, _dump(proc.pid, where), r.calls, by_thread[n])
                    _split(client_before, client_after, _dump(gen.pid, where), r.calls, client_threads[n])
                    total[n].append(r.server_cpu_s[proc.pid] / r.calls * 1e6)
                    client_total[n].append(r.client_cpu_s / r.calls * 1e6)
                    rps[n].append(r.rps)
            print(f"server CPU per call by thread (medians of {a.rounds} rounds of {a.seconds} s, concurrency "
                  f"{a.concurrency}):")
            for n in servers:
                name = "variant 2 (bare mTLS)" if n == 2 else "variant 3 (agent, whole chain)"
                print(f"  {name}: {statistics.median(rps[n]):.0f} rps, {statistics.median(total[n]):.0f} us/call")
                _print_threads(by_thread[n])
            print("load generator CPU per call by thread, as client of:")
            for n in servers:
                name = "variant 2 (a grpc.aio stub)" if n == 2 else "variant 3 (MeshNode.stub, the client chain)"
                print(f"  {name}: {statistics.median(client_total[n]):.0f} us/call")
                _print_threads(client_threads[n])
            for who, pid in (("agent (variant 3)", servers[3].pid), ("load generator", gen.process.pid)):
                parts = _dump(pid, where)["parts"]
                assert isinstance(parts, dict)
                print(f"chain parts in the {who}: thread CPU per call of each part")
                for part, c in parts.items():
                    if c["calls"] and c["ns"]:
                        print(f"  {c['ns'] / c['calls'] / 1000:7.1f} us  {part}  (x{c['calls']})")
        finally:
            if gen is not None:
                gen.close()
            procs.stop_all()

    _in_workdir(run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
