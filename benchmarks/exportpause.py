"""How long the audit exporter makes the event loop wait: what a call feels, without gRPC in the way.

One process per variant, each a fresh interpreter:

* a *ticker* process writes its ``time.monotonic_ns()`` (a clock every process shares) to a socket
  every ``1000 / rate`` ms; the asyncio loop of the measured process reads each stamp as a request and
  records ``now - stamp``: how late the loop handled it (**socket lag**, the loop's side of a call's
  latency; the ticker holds no lock of ours, so it never waits for the measured process's GIL);
* for every stamp the loop makes and ends one server span with the real :class:`FastTracer`,
  carrying the attributes ``interceptors/audit.py`` gives a server span (so ``rate`` spans/s);
* a 1 ms timer (``loop.call_at``) records how late it ran (**timer lag**). Its floor is the
  selector's: asyncio and epoll round a sleep up to the next millisecond, so a quiet loop shows up to
  +1 ms; read it for its tail, and read the socket lag for sub-millisecond figures;
* each request also leaves ``--churn`` tracked objects in a reference cycle, as grpc.aio's call
  handling does: 5 make the young collections a bare grpc.aio server has at 1000 calls/s (~7/s,
  measured here), which is what ages queued spans into the older generations;
* ``gc.callbacks`` time every collection (generation, duration, thread).

Variants: ``bare`` (spans made, no processor: the floor), ``export`` (a real
:class:`QueueSpanProcessor` with its defaults and the real :class:`JsonlExporter` writing to a temporary
file), ``export+freeze`` (the same after :func:`agentmesh.runtime.gcfreeze.freeze_after_startup`),
``unsliced`` / ``unsliced+freeze`` (the export as it was before slicing: up to 512 spans per export
call, every 0.5 s, no time budget; with today's faster JSONL lines) and ``sinkargs`` /
``sinkargs+freeze`` (slices within the time budget, but the 512 spans / 0.5 s that ``AuditSink``
passed when slicing came in). The process imports what a mesh member imports first, so a full
collection walks a member-sized heap.

    .venv/bin/python -m benchmarks.exportpause                     # bare, unsliced, export, export+freeze; 20 s each
    .venv/bin/python -m benchmarks.exportpause --seconds 5 --variants bare,export --rounds 2
    .venv/bin/python -m benchmarks.exportpause --json /tmp/pause.json

Each figure is printed with ``/proc/loadavg`` read just before its run and ``others``: the CPUs the
rest of the machine kept busy during the run (``/proc/stat`` minus this benchmark's own processes).
Other work shows up in the tail, so interleave variants with ``--rounds`` and let the medians use only
the quiet runs (``--max-others``, default 0.15 CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

VARIANTS = ("bare", "unsliced", "unsliced+freeze", "sinkargs", "sinkargs+freeze", "export", "export+freeze")
DEFAULT_VARIANTS = ("bare", "unsliced", "export", "export+freeze")
METHOD = "/agentmesh.v1.Agent/Invoke"
WARMUP = 1.0  # seconds of load before recording

#: the ticker: writes 8-byte monotonic stamps to fd argv[1] every argv[2] seconds for argv[3] seconds
TICKER = """
import os, sys, time
fd, period, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
start = time.monotonic()
nxt = start
while True:
    nxt += period
    delay = nxt - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    now = time.monotonic_ns()
    if now / 1e9 - start > seconds:
        break
    os.write(fd, now.to_bytes(8, "little"))
"""


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary_ms(values_ns: Sequence[int]) -> dict[str, float]:
    ms = [v / 1e6 for v in values_ns]
    return {
        "n": len(ms),
        "p50": _pct(ms, 0.50),
        "p90": _pct(ms, 0.90),
        "p99": _pct(ms, 0.99),
        "p99.9": _pct(ms, 0.999),
        "max": max(ms) if ms else float("nan"),
    }


class GcTimer:
    """Times every collection through ``gc.callbacks``: (generation, seconds, thread name, recording)."""

    def __init__(self) -> None:
        self.records: list[tuple[int, float, str]] = []
        self.recording = False
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        elif self.recording:
            self.records.append((info["generation"], time.perf_counter() - self._t0, threading.current_thread().name))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for gen in (0, 1, 2):
            ms = [d * 1e3 for g, d, _ in self.records if g == gen]
            out[f"gen{gen}"] = {
                "count": len(ms),
                "p50_ms": _pct(ms, 0.5),
                "max_ms": max(ms) if ms else 0.0,
                "total_ms": sum(ms),
            }
        out["gen2_in_export_thread"] = sum(1 for g, _, t in self.records if g == 2 and t.startswith("audit"))
        return out


class TimedExporter:
    """Passes batches to ``inner``, timing each export (wall and thread CPU): how long a slice holds on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[int, float, float]] = []  # (spans, wall s, thread cpu s)

    def export(self, spans: Sequence[Any]) -> Any:
        w0, c0 = time.perf_counter(), time.thread_time()
        result = self.inner.export(spans)
        self.calls.append((len(spans), time.perf_counter() - w0, time.thread_time() - c0))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def summary(self) -> dict[str, Any]:
        sizes = [n for n, _, _ in self.calls]
        wall = [w * 1e3 for _, w, _ in self.calls]
        cpu = [c * 1e3 for _, _, c in self.calls]
        spans = sum(sizes)
        return {
            "calls": len(self.calls),
            "spans": spans,
            "size_mean": spans / len(sizes) if sizes else 0.0,
            "size_max": max(sizes, default=0),
            "wall_p50_ms": _pct(wall, 0.5),
            "wall_p99_ms": _pct(wall, 0.99),
            "wall_max_ms": max(wall, default=0.0),
            "cpu_us_per_span": sum(cpu) * 1e3 / spans if spans else 0.0,
        }


def _span_attributes() -> tuple[dict[str, Any], dict[str, Any]]:
    """The start and end attributes of a server span, as interceptors/audit.py sets them (the
    transaction id and the remaining rate-limit budget change from call to call: see ``on_request``)."""
    import grpc

    from agentmesh.audit import attributes as A
    from agentmesh.audit import rpc_attributes
    from agentmesh.audit.spans import STATUS_ATTRIBUTES

    start = {**rpc_attributes(METHOD), A.AGENT: "summarizer"}
    end = {
        **STATUS_ATTRIBUTES[grpc.StatusCode.OK],
        A.NETWORK_PEER_ADDRESS: "127.0.0.1",
        A.NETWORK_PEER_PORT: 51234,
        A.PEER_SPIFFE_ID: "spiffe://example.org/agent/ingestor",
        A.ENDUSER_ID: "spiffe://example.org/agent/ingestor",
        A.ROLES: ["ingestor"],
        A.TXN: "3f2b7c1e-5a64-4d7e-9c1f-0b8e2d4a6c10",
        A.DELEGATION_CHAIN: ["spiffe://example.org/agent/bridge", "spiffe://example.org/agent/ingestor"],
        A.SCOPE: ["summarize"],
        A.DECISION: "allow",
        A.RULE: "ingestor-to-summarizer",
        A.RATELIMIT_REMAINING: 97,
    }
    return start, end


#: what a member process has imported by the time it serves (a full collection walks all of it); a
#: fixed list rather than ``agentmesh.runtime.node``, so the heap stays the same while that code changes
MEMBER_MODULES = (
    "grpc", "grpc.aio", "cryptography.x509", "cryptography.hazmat.primitives.asymmetric.ec", "jwt", "yaml",
    "google.protobuf.json_format", "opentelemetry.sdk.trace", "starlette.applications", "httpx",
    "agentmesh.pki", "agentmesh.tokens", "agentmesh.identity", "agentmesh.configfile", "agentmesh.guard",
    "agentmesh.trust", "agentmesh.audit", "agentmesh.v1.agent_pb2_grpc", "agentmesh.v1.control_pb2_grpc",
)


def _import_a_member() -> list[str]:
    """Imports :data:`MEMBER_MODULES`; returns those that failed (an extra not installed...)."""
    failed = []
    for name in MEMBER_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # an extra not installed...: listed in the results
            failed.append(name)
    return failed


def run_one(variant: str, seconds: float, rate: float, processor_kw: dict[str, Any] | None = None,
            churn: int = 5) -> dict[str, Any]:
    """One variant in this process (call it in a fresh interpreter)."""
    from opentelemetry.trace import SpanKind

    from agentmesh.audit.exporters import JsonlExporter
    from agentmesh.audit.fastspan import FastTracer
    from agentmesh.audit.processor import QueueSpanProcessor

    not_imported = _import_a_member()
    tmp = tempfile.TemporaryDirectory(prefix="exportpause-")
    exporter: TimedExporter | None = None
    processor: QueueSpanProcessor | None = None
    label = variant
    variant, _, budget_ms = variant.partition("@")
    if budget_ms:
        processor_kw = {**(processor_kw or {}), "slice_budget": float(budget_ms) / 1000}
    if variant != "bare":
        exporter = TimedExporter(JsonlExporter(Path(tmp.name) / "audit.jsonl"))
        kw: dict[str, Any] = dict(processor_kw or {})
        if variant.startswith(("unsliced", "sinkargs")):
            kw = {"max_batch": 512, "schedule_delay": 0.5}
        if variant.startswith("unsliced"):
            kw["slice_budget"] = 1.0  # no time bound: 512-span slices
        processor = QueueSpanProcessor([exporter], name="audit-bench", **kw)
    tracer = FastTracer("summarizer", None, processor.on_end if processor is not None else None)
    start_attrs, end_attrs = _span_attributes()
    from agentmesh.audit import attributes as A

    seq = 0
    gc.collect()
    tracked = len(gc.get_objects())
    if variant.endswith("+freeze"):
        from agentmesh.runtime.gcfreeze import freeze_after_startup

        freeze_after_startup()
    started = time.perf_counter()
    gc.collect()  # what one full collection costs on this heap (frozen objects are skipped)
    full_collection_ms = (time.perf_counter() - started) * 1e3
    timer = GcTimer()
    gc.callbacks.append(timer)

    socket_lag: list[int] = []
    timer_lag: list[int] = []
    recording = False

    async def main() -> None:
        nonlocal recording
        loop = asyncio.get_running_loop()
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        ticker = subprocess.Popen(
            [sys.executable, "-c", TICKER, str(wsock.fileno()), str(1 / rate), str(seconds + WARMUP)],
            pass_fds=(wsock.fileno(),),
        )
        wsock.close()
        pending = b""
        finished = loop.create_future()

        def on_request() -> None:
            nonlocal pending, seq
            try:
                data = rsock.recv(65536)
            except BlockingIOError:
                return
            if not data:
                loop.remove_reader(rsock)
                finished.set_result(None)
                return
            now = time.monotonic_ns()
            data = pending + data
            whole = len(data) - len(data) % 8
            pending = data[whole:]
            for i in range(0, whole, 8):
                if recording:
                    socket_lag.append(now - int.from_bytes(data[i:i + 8], "little"))
                span = tracer.start_span(METHOD, kind=SpanKind.SERVER, attributes=start_attrs)
                seq += 1
                if churn:  # what grpc.aio leaves to the cycle collector per call (see --churn)
                    garbage: list[Any] = [[] for _ in range(churn - 1)]
                    garbage.append(garbage)
                span.set_attributes({**end_attrs, A.TXN: f"txn-{seq:032x}", A.RATELIMIT_REMAINING: seq % 100})
                span.end()

        period = 0.001

        def on_timer(due: float) -> None:
            now = loop.time()
            if recording:
                timer_lag.append(int((now - due) * 1e9))
            if not finished.done():
                nxt = max(due + period, now)  # after a stall, the next tick is due at once (no backlog)
                loop.call_at(nxt, on_timer, nxt)

        loop.add_reader(rsock, on_request)
        first = loop.time() + period
        loop.call_at(first, on_timer, first)
        await asyncio.sleep(WARMUP)
        recording = timer.recording = True
        await finished
        recording = timer.recording = False
        ticker.wait()
        rsock.close()

    asyncio.run(main())
    gc.callbacks.remove(timer)
    out: dict[str, Any] = {
        "variant": label,
        "seconds": seconds,
        "rate": rate,
        "processor_kw": processor_kw or {},
        "tracked_objects": tracked,
        "frozen_objects": gc.get_freeze_count(),
        "full_collection_ms": full_collection_ms,
        "churn": churn,
        "not_imported": not_imported,
        "gc_threshold": list(gc.get_threshold()),
        "socket_lag_ms": _summary_ms(socket_lag),
        "timer_lag_ms": _summary_ms(timer_lag),
        "gc": timer.summary(),
    }
    if processor is not None and exporter is not None:
        processor.force_flush()
        out["processor"] = processor.stats
        out["export"] = exporter.summary()
        processor.close()
    tmp.cleanup()
    return out


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (``/proc/stat``), or NaN where there is none."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _spawn(variant: str, seconds: float, rate: float, extra: Sequence[str]) -> dict[str, Any]:
    load = _loadavg()
    busy0, own0, t0 = _busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.exportpause", "--child", variant, "--seconds", str(seconds),
         "--rate", str(rate), *extra],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"variant {variant} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["loadavg_before"] = load
    result["loadavg_after"] = _loadavg()
    own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime
    # the CPU the rest of the machine used meanwhile, in CPUs: what competes with the measure
    result["others_cpus"] = (_busy_seconds() - busy0 - own) / (time.monotonic() - t0)
    return result


HEADER = (f"{'variant':<14} {'loadavg':<15} {'others':<6} {'socket lag ms p50/p99/p99.9/max':<34} "
          f"{'timer lag ms p99/p99.9/max':<27} {'gen2 n/max/total ms':<22} export calls/mean size/max ms/us per span")


def _print(results: list[dict[str, Any]]) -> None:
    for r in results:
        s, t, g2 = r["socket_lag_ms"], r["timer_lag_ms"], r["gc"]["gen2"]
        ex = r.get("export")
        exs = (f"{ex['calls']}/{ex['size_mean']:.0f}/{ex['wall_max_ms']:.2f}/{ex['cpu_us_per_span']:.1f}"
               if ex else "-")
        print(f"{r['variant']:<14} {r['loadavg_before']:<15} {r['others_cpus']:<6.2f} "
              f"{s['p50']:.3f}/{s['p99']:.3f}/{s['p99.9']:.3f}/{s['max']:.2f}".ljust(66)
              + f" {t['p99']:.3f}/{t['p99.9']:.3f}/{t['max']:.2f}".ljust(28)
              + f" {g2['count']}/{g2['max_ms']:.1f}/{g2['total_ms']:.1f}".ljust(23)
              + f" {exs}")


def _medians(results: list[dict[str, Any]], variants: Sequence[str], max_others: float) -> None:
    quiet = [r for r in results if r["others_cpus"] <= max_others]
    print(f"\nmedian over the {len(quiet)} of {len(results)} runs while the rest of the machine used "
          f"<= {max_others} CPU; socket lag added over bare (ms): p50 / p99 / p99.9")
    by = {v: [r for r in quiet if r["variant"] == v] for v in variants}
    if not by.get("bare"):
        return
    base = {q: statistics.median(r["socket_lag_ms"][q] for r in by["bare"]) for q in ("p50", "p99", "p99.9")}
    for v in variants:
        if v == "bare" or not by[v]:
            continue
        med = {q: statistics.median(r["socket_lag_ms"][q] for r in by[v]) for q in ("p50", "p99", "p99.9")}
        print(f"  {v:<14} " + " / ".join(f"{med[q] - base[q]:+.3f}" for q in ("p50", "p99", "p99.9")))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, of {VARIANTS}; NAME@MS sets that variant's slice_budget (ms)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="requests (spans) per second")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of all variants")
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument("--max-others", type=float, default=0.15,
                        help="medians only over runs while the rest of the machine used at most this many CPUs")
    parser.add_argument("--churn", type=int, default=5,
                        help="tracked objects each request leaves to the cycle collector (a reference cycle); 5 "
                             "makes ~7 young collections per 1000 requests, as a bare grpc.aio server has")
    parser.add_argument("--budget", type=float, help="slice_budget in seconds (default: the processor's)")
    parser.add_argument("--max-batch", type=int, help="max_batch (default: the processor's)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    processor_kw: dict[str, Any] = {}
    extra: list[str] = ["--churn", str(args.churn)]
    if args.budget is not None:
        processor_kw["slice_budget"] = args.budget
        extra += ["--budget", str(args.budget)]
    if args.max_batch is not None:
        processor_kw["max_batch"] = args.max_batch
        extra += ["--max-batch", str(args.max_batch)]
    if args.child:
        print(json.dumps(run_one(args.child, args.seconds, args.rate, processor_kw, args.churn)))
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = {v.partition("@")[0] for v in variants} - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {sorted(unknown)}")
    results = []
    print(HEADER)
    for _ in range(args.rounds):
        for v in variants:
            results.append(_spawn(v, args.seconds, args.rate, extra))
            _print(results[-1:])
    print("\n" + HEADER)
    _print(results)
    _medians(results, variants, args.max_others)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
