"""``python -m benchmarks.run [--quick] [--rotate] [--smoke] [--fixed-rate]``: the agentmesh benchmark.

Phases: micro-benchmarks (in-process); verifiable delegation's cost (a 3-hop chain delegated and not,
in-process); the fixed-rate phase (an open loop at 250 / 500 / 1000 calls per second, bare mTLS against the
whole chain: added latency from each call's intended send time and mesh CPU per 1000 rps, beside the published
anchors; ``fixedrate.py``); the eight variants side by side (every server in its own process, the load
generator in another: a warm-up, then interleaved rounds A B C ... A B C ..., medians reported;
``variants.py``); certificate rotation under load; the identity lifecycle: automatic renewal under load,
revocation propagation, join cost; what the idle mesh costs (``idlecost.py``). Writes a table to the terminal,
benchmarks/results/latest.json and benchmarks/results/latest.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.delegation import run_delegation
from benchmarks.fixedrate import run_fixed_rate
from benchmarks.guard import print_guard, run_guard
from benchmarks.httpload import HttpLoad
from benchmarks.idlecost import run_idle
from benchmarks.joincost import run_join
from benchmarks.meshdir import create_mesh
from benchmarks.micro import run_micro
from benchmarks.procs import REPO
from benchmarks.propagation import run_propagation
from benchmarks.renewal import run_renewal
from benchmarks.rotation import run_rotation
from benchmarks.settings import FULL, QUICK, SMOKE, VARIANTS, Preset
from benchmarks.variants import run_variants

__all__ = ["main"]

RESULTS = REPO / "benchmarks" / "results"


def log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------- main


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="fewer, shorter rounds; no rotation or renewal under load (~2 min)")
    mode.add_argument("--smoke", action="store_true",
                      help="variants 1-3, one 0.3 s round each; the fixed rate at 200/s, one 0.3 s round "
                           "(for the test)")
    p.add_argument("--rotate", action="store_true",
                   help="only rotation and renewal under load, revocation propagation and join cost "
                        "(the full run includes them)")
    p.add_argument("--fixed-rate", action="store_true",
                   help="only the fixed-rate (open-loop) phase; with --quick or --smoke its shorter rounds")
    p.add_argument("--rates", help="comma-separated calls per second of the fixed-rate phase (default 250,500,1000)")
    p.add_argument("--fixed-seconds", type=float, help="length of one fixed-rate round of one variant at one rate")
    p.add_argument("--fixed-rounds", type=int, help="interleaved rounds of the fixed-rate phase")
    p.add_argument("--no-fixed-rate", action="store_true", help="skip the fixed-rate phase")
    p.add_argument("--variants", help="comma-separated variant numbers, e.g. 1,2,3")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int)
    p.add_argument("--seconds", type=float, help="length of one round of one variant")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory of latest.json and latest.png")
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--no-micro", action="store_true")
    p.add_argument("--no-delegation", action="store_true", help="skip the delegation benchmark (full and quick runs)")
    p.add_argument("--keep", action="store_true", help="keep the temporary mesh directory and server logs")
    return p.parse_args(argv)


def _preset(a: argparse.Namespace) -> Preset:
    preset = SMOKE if a.smoke else QUICK if a.quick else FULL
    changes: dict[str, Any] = {}
    if a.rounds:
        changes["rounds"] = a.rounds
    if a.seconds:
        changes["seconds"] = a.seconds
    if a.variants:
        changes["variants"] = tuple(sorted({int(x) for x in a.variants.split(",") if x.strip()}))
        if not set(changes["variants"]) <= set(VARIANTS):
            raise SystemExit(f"--variants: choose from {', '.join(map(str, VARIANTS))}")
    if a.rates:
        try:
            changes["fixed_rates"] = tuple(int(x) for x in a.rates.split(",") if x.strip())
        except ValueError:
            raise SystemExit("--rates: whole calls per second, e.g. 250,500,1000") from None
        if not changes["fixed_rates"] or min(changes["fixed_rates"]) <= 0:
            raise SystemExit("--rates: positive calls per second, e.g. 250,500,1000")
    if a.fixed_seconds:
        changes["fixed_seconds"] = a.fixed_seconds
    if a.fixed_rounds:
        changes["fixed_rounds"] = a.fixed_rounds
    if a.no_fixed_rate:
        changes["fixed_rates"] = ()
    if a.rotate:
        if a.fixed_rate:
            raise SystemExit("--rotate and --fixed-rate each run only their own phases: choose one")
        changes.update(rotate=True, variants=(), renewal=True, propagation_trials=FULL.propagation_trials,
                       joins=FULL.joins, join_history=FULL.join_history, idle_seconds=FULL.idle_seconds, fixed_rates=())
    if a.fixed_rate:
        if a.no_fixed_rate:
            raise SystemExit("--fixed-rate with --no-fixed-rate runs nothing")
        changes.update(variants=(), rotate=False, renewal=False, propagation_trials=0, joins=0, idle_seconds=0.0)
    if a.no_chart:
        changes["chart"] = False
    return dataclasses.replace(preset, **changes) if changes else preset


def _phase(name: str, fn: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = fn()
    log(f"{name} done in {time.perf_counter() - started:.1f} s")
    return result


def _lifecycle(workdir: Path, preset: Preset, concurrency: int) -> dict[str, Any] | None:
    """Renewal under load, revocation propagation, join cost and the idle mesh's CPU, as far as the preset asks;
    None if not at all."""
    out: dict[str, Any] = {"renewal": None, "propagation": None, "join": None, "idle": None}
    if preset.renewal:
        log(f"automatic renewal under load ({preset.renewal_seconds:g} s) ...")
        out["renewal"] = _phase("renewal", lambda: run_renewal(workdir, seconds=preset.renewal_seconds,
                                                               concurrency=concurrency, log=log))
    if preset.propagation_trials:
        log(f"revocation propagation ({preset.propagation_trials} trials) ...")
        out["propagation"] = _phase("propagation", lambda: run_propagation(
            workdir, trials=preset.propagation_trials, log=log))
    if preset.joins:
        log(f"join cost ({preset.joins} joins) ...")
        out["join"] = _phase("join cost", lambda: run_join(workdir, joins=preset.joins, history=preset.join_history))
    if preset.idle_seconds:
        out["idle"] = _phase("idle cost", lambda: run_idle(workdir, seconds=preset.idle_seconds, log=log))
    return out if any(v is not None for v in out.values()) else None


def main(argv: Sequence[str] | None = None) -> int:
    a = _parse(argv)
    preset = _preset(a)
    mode = "rotate" if a.rotate else f"fixed-rate ({preset.name})" if a.fixed_rate else preset.name
    only_phase = a.rotate or a.fixed_rate
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="agentmesh-bench-"))
    http = HttpLoad(workdir)
    doc: dict[str, Any] = {
        "schema": report.SCHEMA,
        "mode": mode,
        "machine": report.machine(),
        "settings": {"concurrency": a.concurrency, "rounds": preset.rounds, "round_seconds": preset.seconds,
                     "warmup_seconds": preset.warmup, "http_load": http.tool, "variants": list(preset.variants),
                     "medians_of": "rounds", "ratios": "ratio of medians"},
        "variants": {},
        "micro": None,
        "rotation": None,
        "lifecycle": None,
        "delegation": None,
        "guard": None,
        "fixed_rate": None,
    }
    try:
        if not only_phase and not a.no_micro:
            mesh = create_mesh(workdir / "micro-mesh")
            log("micro-benchmarks ...")
            doc["micro"] = _phase("micro-benchmarks",
                                  lambda: run_micro(mesh, workdir, preset.micro_seconds, preset.ca_seconds))
        if preset.name in ("full", "quick") and not only_phase and not a.no_micro:
            log("payload guard: the worst 1 MiB requests ...")
            doc["guard"] = _phase("guard", lambda: run_guard(log=log))
        if preset.name in ("full", "quick") and not only_phase and not a.no_delegation:
            log("delegation: a 3-hop chain delegated and not, in-process ...")
            doc["delegation"] = _phase("delegation", lambda: run_delegation(workdir, mode=preset.name, log=log))
        if preset.fixed_rates:
            doc["fixed_rate"] = _phase("fixed rate", lambda: run_fixed_rate(
                workdir, rates=preset.fixed_rates, seconds=preset.fixed_seconds, rounds=preset.fixed_rounds,
                warmup=preset.fixed_warmup, log=log))
        if preset.variants:
            doc["variants"] = _phase("variants", lambda: run_variants(workdir, preset, preset.variants,
                                                                      a.concurrency, http))
        if preset.rotate:
            log(f"rotation under load (2 phases of {preset.rotate_seconds:g} s) ...")
            doc["rotation"] = _phase("rotation", lambda: run_rotation(
                workdir, seconds=preset.rotate_seconds, concurrency=a.concurrency, rotations=2, log=log))
        doc["lifecycle"] = _lifecycle(workdir, preset, a.concurrency)
    finally:
        if a.keep:
            log(f"kept {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    ratios = report.compute_ratios(doc["variants"])
    doc["ratios"] = ratios
    doc["targets"] = report.compute_targets(ratios, doc["micro"], doc["rotation"], doc["lifecycle"], doc["delegation"],
                                            doc["fixed_rate"])
    doc["duration_s"] = round(time.perf_counter() - started, 1)
    report.print_report(doc)
    if doc["guard"]:
        print_guard(doc["guard"])
    json_path = a.out / "latest.json"
    report.write_json(doc, json_path)
    log(f"wrote {json_path}")
    if preset.chart and doc["variants"]:
        png = a.out / "latest.png"
        if importlib.util.find_spec("matplotlib") is None:
            log("no chart: matplotlib is not installed (pip install -e '.[bench]')")
        else:
            report.write_chart(doc, png)
            log(f"wrote {png}")
    log(f"total {doc['duration_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
