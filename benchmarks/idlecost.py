"""What a mesh costs when nobody calls it: the CPU of each idle member, and of one thread wake-up here.

    python -m benchmarks.idlecost [--seconds 10] [--settle 2]

Starts the bench mesh's control plane, one agent (``agentmesh agent``'s server chain) and the REST bridge,
lets them settle (the first trust data, tokens, the bridge's channel), then reads each process's CPU
time, per thread, over ``--seconds`` of no calls at all: what heartbeats, timers and housekeeping threads
cost a member that waits. Thread CPU comes from ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds).

It also times one wake-up of a sleeping thread on this machine (``threading.Event.wait(0.05)``, the thread's
own CPU per wake-up): on the 2-vCPU VM this repository is measured on it is ~0.14 ms, against a few
microseconds on bare metal, so anything that wakes periodically costs here ~20x what it costs elsewhere.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from benchmarks.meshdir import AGENT, create_mesh
from benchmarks.procs import Processes, thread_cpu_ns

__all__ = ["print_idle", "run_idle", "wakeup_cost_us"]


def _label(key: str, pid: int) -> str:
    tid, comm = key.split(":", 1)
    if int(tid) == pid:
        return "main thread (event loop)"
    return "other Python threads (audit export, grpc poller)" if comm.startswith("python") else f"native: {comm}"


def wakeup_cost_us(wakes: int = 20, timeout: float = 0.05) -> float:
    """The CPU (us) a thread spends per wake-up from a timed ``Event.wait`` that times out: the median of ``wakes``."""
    costs: list[float] = []

    def sleeper() -> None:
        event = threading.Event()
        for _ in range(wakes):
            t0 = time.thread_time_ns()
            event.wait(timeout)
            costs.append((time.thread_time_ns() - t0) / 1e3)

    thread = threading.Thread(target=sleeper, name="wakeup-cost")
    thread.start()
    thread.join()
    return statistics.median(costs)


def run_idle(workdir: Path, *, seconds: float, settle: float = 2.0,
             log: Callable[[str], None] = lambda _msg: None) -> dict[str, Any]:
    """Each idle process's CPU in ms per second (total and by thread), and the wake-up cost of this machine."""
    mesh = create_mesh(workdir / "idle-mesh")
    cfg = ["--config", str(mesh.config_path)]
    procs = Processes(workdir)
    try:
        started = {
            "control": procs.python("idle-control", "control", cfg,
                                    int(mesh.config.control.address.rpartition(":")[2])),
        }
        started["control"].wait_listening()
        started["agent"] = procs.python("idle-agent", "agent", [*cfg, "--name", AGENT],
                                        int(mesh.address(AGENT).rpartition(":")[2]))
        started["bridge"] = procs.python("idle-bridge", "bridge", [*cfg, "--listen", mesh.bridge_listen],
                                         int(mesh.bridge_listen.rpartition(":")[2]))
        for proc in started.values():
            proc.wait_listening()
        time.sleep(settle)
        log(f"idle: {len(started)} processes, {seconds:g} s without a call ...")
        before = {name: thread_cpu_ns(p.pid) for name, p in started.items()}
        t0 = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        after = {name: thread_cpu_ns(p.pid) for name, p in started.items()}
        processes: dict[str, dict[str, Any]] = {}
        for name, proc in started.items():
            by: dict[str, float] = defaultdict(float)
            for key, ns in after[name].items():
                by[_label(key, proc.pid)] += (ns - before[name].get(key, 0)) / 1e6 / elapsed
            processes[name] = {"ms_per_s": sum(by.values()),
                               "by_thread_ms_per_s": dict(sorted(by.items(), key=lambda kv: -kv[1]))}
    finally:
        procs.stop_all()
    return {"status": "ok", "seconds": elapsed, "processes": processes, "wakeup_us": wakeup_cost_us()}


def print_idle(idle: Mapping[str, Any]) -> None:
    print(f"  idle members ({idle['seconds']:.0f} s without a call), CPU in ms per second: " + ", ".join(
        f"{name} {p['ms_per_s']:.2f}" for name, p in idle["processes"].items())
          + f"; one thread wake-up on this machine: {idle['wakeup_us']:.0f} us of CPU")
    for name, p in idle["processes"].items():
        parts = ", ".join(f"{label} {ms:.2f}" for label, ms in p["by_thread_ms_per_s"].items() if ms >= 0.01)
        print(f"    {name}: {parts or 'nothing measurable'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.idlecost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="how long to measure the idle mesh")
    p.add_argument("--settle", type=float, default=2.0, help="seconds after start-up before measuring")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="agentmesh-idle-") as work:
        idle = run_idle(Path(work), seconds=a.seconds, settle=a.settle, log=print)
    print_idle(idle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
