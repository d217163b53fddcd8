"""The fixed-rate phase: what the whole chain adds at a given request rate, in the anchors' terms.

Variant 2 (bare grpc.aio with mutual TLS, no interceptors) and variant 3 (``MeshNode.server()`` /
``MeshNode.stub()``, the whole chain, with the control plane) run in their own processes as in the variant
phase; the load generator runs in another and sends at a fixed rate, an open loop whose latencies count
from each call's intended send time (``openloop.py``). After a warm-up, every round runs every rate and
both variants, the variants' order alternating (2 3, 3 2, ...), so slow drift in the machine's load
falls on both alike; ``fixedreport.py`` takes medians over the rounds and the differences.

CPU per call comes from ``/proc`` around each round: the agent's process (its server chain when it is
variant 3's), the control plane's, and the load generator's own (its client chain when it calls variant 3).
``/proc/loadavg`` is read before and after the phase, and the CPU other processes used during each round
(``background_cores``) is recorded beside it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import fixedreport
from benchmarks.loadgen import FixedRateResult, LoadGenerator, LoadgenSpec
from benchmarks.meshdir import create_mesh
from benchmarks.openloop import percentile
from benchmarks.procs import Processes, ServerProcess, children_cpu_seconds, system_busy_seconds
from benchmarks.settings import FIXED_RATE_VARIANTS, VARIANTS
from benchmarks.variants import Bench, cpu_of, start_servers

__all__ = ["loadavg", "run_fixed_rate"]

SHORT_BY = 0.02  # a round whose achieved rate is more than 2 % under its target is marked short
SETTLE_S = 0.3  # a pause before each round, so a round that fell behind leaves no work to the next
GENERATOR = "loadgen"  # the generator's name among a round's processes


def loadavg() -> list[float]:
    """The machine's load average over 1, 5 and 15 minutes (``/proc/loadavg``)."""
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def _entry(index: int, r: FixedRateResult, procs: Sequence[ServerProcess], background: float) -> dict[str, Any]:
    """One round of one variant at one rate, for latest.json (the latencies themselves stay in memory)."""
    lat = r.latency_ns
    calls = r.calls or None
    achieved = r.achieved_rps
    return {
        "round": index, "rate": r.rate, "intended_calls": r.intended, "calls": r.calls, "errors": r.errors,
        "error_codes": r.error_codes, "error_samples": r.extra.get("error_samples", {}),
        "elapsed_s": r.elapsed, "achieved_rps": achieved, "short": achieved < r.rate * (1 - SHORT_BY),
        **{f"{name}_ms": percentile(lat, q) / 1e6 for name, q in fixedreport.PERCENTILES.items()},
        "max_ms": lat[-1] / 1e6 if lat else None,
        "service_p50_ms": r.service_ns["p50"] / 1e6, "service_p99_ms": r.service_ns["p99"] / 1e6,
        "lag_p50_ms": r.lag_ns["p50"] / 1e6, "lag_p99_ms": r.lag_ns["p99"] / 1e6, "lag_max_ms": r.lag_ns["max"] / 1e6,
        "cpu_us_per_call": {**{p.name: r.server_cpu_s[p.pid] / calls * 1e6 for p in procs},
                            GENERATOR: r.client_cpu_s / calls * 1e6} if calls else {},
        "pacer_cpu_us_per_call": r.pacer_cpu_s / calls * 1e6 if calls else None,
        "background_cores": background,
        "loadavg_1m": loadavg()[0],
    }


def run_fixed_rate(workdir: Path, *, rates: Sequence[int], seconds: float, rounds: int, warmup: float,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """The phase's section of latest.json (``fixedreport.summarize``)."""
    load_before = loadavg()
    log(f"fixed rate: {', '.join(map(str, rates))} calls/s, {rounds} rounds of {seconds:g} s per variant and rate "
        f"(load average before: {' '.join(f'{x:.2f}' for x in load_before)}) ...")
    mesh = create_mesh(workdir / "fixed-mesh")
    logs = workdir / "fixed-logs"
    logs.mkdir(parents=True, exist_ok=True)
    b = Bench(mesh, Processes(logs))
    wanted = FIXED_RATE_VARIANTS
    entries: dict[int, dict[int, list[dict[str, Any]]]] = {rate: {n: [] for n in wanted} for rate in rates}
    samples: dict[int, dict[int, list[int]]] = {rate: {n: [] for n in wanted} for rate in rates}
    status, reason = "ok", None
    with contextlib.ExitStack() as stack:
        stack.callback(b.procs.stop_all)
        start_servers(b, wanted, stack)
        if b.skipped:
            status = "failed"
            reason = "; ".join(f"variant {n}: {why}" for n, (_, why) in b.skipped.items())
        else:
            try:
                gen = LoadGenerator(LoadgenSpec(str(mesh.config_path),
                                                {VARIANTS[n].key: b.grpc_targets[n] for n in wanted}))
            except RuntimeError as e:
                return fixedreport.summarize({}, {}, status="failed", reason=f"the load generator did not start: {e}",
                                             servers={}, settings={"rates": list(rates)},
                                             loadavg={"before": load_before, "after": loadavg()})
            stack.callback(gen.close)

            def one_round(n: int, rate: int, length: float, index: int) -> tuple[dict[str, Any], list[int]]:
                procs = b.servers[n]
                watched = [p.pid for p in b.procs.started] + [os.getpid(), gen.pid]
                time.sleep(SETTLE_S)
                busy0, kids0, all0 = system_busy_seconds(), children_cpu_seconds(), cpu_of(watched)
                r = gen.run_fixed(VARIANTS[n].key, rate, length, [p.pid for p in procs])
                all1 = cpu_of(watched)
                busy = system_busy_seconds() - busy0 - (children_cpu_seconds() - kids0)
                harness = sum(all1[pid] - all0[pid] for pid in all0 if pid in all1) + r.pacer_cpu_s
                background = max(0.0, busy - harness) / r.elapsed if r.elapsed else 0.0
                return _entry(index, r, procs, background), r.latency_ns

            top = max(rates)
            log(f"  warm-up ({warmup:g} s per variant at {top} calls/s) ...")
            for n in wanted:
                w, _ = one_round(n, top, warmup, 0)
                if w["calls"] == 0:
                    status, reason = "failed", f"variant {n}: no successful call in the warm-up ({w['error_codes']})"
            for i in range(rounds if status == "ok" else 0):
                for k, rate in enumerate(rates):
                    order = wanted if (i + k) % 2 == 0 else tuple(reversed(wanted))
                    for n in order:
                        entry, lat = one_round(n, rate, seconds, i + 1)
                        entries[rate][n].append(entry)
                        samples[rate][n].extend(lat)
                        log(f"  round {i + 1}/{rounds} {rate:5d}/s v{n} {entry['achieved_rps']:7.1f}/s"
                            f"{' SHORT' if entry['short'] else '      '} p50 {entry['p50_ms']:6.3f} "
                            f"p90 {entry['p90_ms']:6.3f} p99 {entry['p99_ms']:6.3f} p99.9 {entry['p999_ms']:7.3f} ms "
                            f"lag p99 {entry['lag_p99_ms']:6.3f} ms  errors {entry['errors']}  "
                            f"background {entry['background_cores']:.2f} cores")
        servers = {n: [p.name for p in b.servers.get(n, [])] for n in wanted}
    load_after = loadavg()
    log(f"  load average after: {' '.join(f'{x:.2f}' for x in load_after)}")
    return fixedreport.summarize(
        entries, samples, status=status, reason=reason, servers=servers,
        settings={"rates": list(rates), "round_seconds": seconds, "rounds": rounds, "warmup_seconds": warmup,
                  "variants": list(wanted), "order": "every round: each rate, the variants alternating 2 3 / 3 2",
                  "latency_from": "intended send time (open loop)", "short_if_achieved_below": 1 - SHORT_BY},
        loadavg={"before": load_before, "after": load_after})
