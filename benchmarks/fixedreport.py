"""The fixed-rate phase's figures: medians over rounds, added latency and mesh CPU, the table beside the
published anchors, and the values issue 12's targets are judged on.

Per rate and variant, each percentile is the median over the rounds of that round's percentile (a round
spoiled by other work on the machine moves it less than it would a pooled figure); the pooled
percentiles over every call of every round are in ``pooled_ms`` too (the steadier p99.9 when rounds are
short). Added latency = variant 3's median minus variant 2's, at the same percentile, same run. CPU per
call = each process's CPU during the round / OK calls, median over rounds; vCPU per 1000 rps = us per
call / 1000 (1000 calls a second of that many us each).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.anchors import ANCHORS, CPU_ANCHORS, FIXED_RATE_TARGETS, TARGET_RATE
from benchmarks.openloop import percentile
from benchmarks.settings import VARIANTS

__all__ = ["PERCENTILES", "fixed_rate_values", "print_fixed_rate", "summarize"]

PERCENTILES = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "p999": 0.999}
LABELS = {"p50": "p50", "p90": "p90", "p99": "p99", "p999": "p99.9"}
BARE, CHAIN = 2, 3
GENERATOR = "loadgen"


def _median(values: Sequence[float | None]) -> float | None:
    real = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(real) if real else None


def _minus(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _variant(n: int, rounds: list[dict[str, Any]], latencies: list[int], servers: Sequence[str]) -> dict[str, Any]:
    lat = sorted(latencies)
    names = list(dict.fromkeys(k for r in rounds for k in r["cpu_us_per_call"]))
    return {
        "number": n, "key": VARIANTS[n].key, "title": VARIANTS[n].title, "server_processes": list(servers),
        **{f"{p}_ms": _median([r[f"{p}_ms"] for r in rounds]) for p in PERCENTILES},
        "pooled_ms": {p: (percentile(lat, q) / 1e6 if lat else None) for p, q in PERCENTILES.items()},
        "pooled_calls": len(lat),
        "achieved_rps": _median([r["achieved_rps"] for r in rounds]),
        "short_rounds": sum(1 for r in rounds if r["short"]),
        "calls": sum(r["calls"] for r in rounds), "errors": sum(r["errors"] for r in rounds),
        "service_p50_ms": _median([r["service_p50_ms"] for r in rounds]),
        "lag_p99_ms": _median([r["lag_p99_ms"] for r in rounds]),
        "cpu_us_per_call": {name: _median([r["cpu_us_per_call"].get(name) for r in rounds]) for name in names},
        "background_cores": _median([r["background_cores"] for r in rounds]),
        "rounds": rounds,
    }


def _cpu(v: Mapping[str, Any], name: str | None) -> float | None:
    return v["cpu_us_per_call"].get(name) if name else None


def _at_rate(rate: int, variants: Mapping[int, dict[str, Any]]) -> dict[str, Any]:
    bare, chain = variants[BARE], variants[CHAIN]
    added = {p: _minus(chain[f"{p}_ms"], bare[f"{p}_ms"]) for p in PERCENTILES}
    added_pooled = {p: _minus(chain["pooled_ms"][p], bare["pooled_ms"][p]) for p in PERCENTILES}
    # the serving process is the first of each variant's processes (the agent; the control plane after it)
    serving = {n: (v["server_processes"] or [None])[0] for n, v in variants.items()}
    server_chain = _minus(_cpu(chain, serving[CHAIN]), _cpu(bare, serving[BARE]))
    client_chain = _minus(_cpu(chain, GENERATOR), _cpu(bare, GENERATOR))
    control = _cpu(chain, "control")
    mesh = server_chain + client_chain if server_chain is not None and client_chain is not None else None

    def vcpu(us: float | None) -> float | None:
        return us / 1000 if us is not None else None

    return {
        "rate": rate, "variants": {v["key"]: v for v in variants.values()},
        "added_ms": added, "added_pooled_ms": added_pooled,
        "server_chain_us_per_call": server_chain, "client_chain_us_per_call": client_chain,
        "mesh_us_per_call": mesh, "control_us_per_call": control,
        "server_chain_vcpu_per_1000rps": vcpu(server_chain), "client_chain_vcpu_per_1000rps": vcpu(client_chain),
        "mesh_vcpu_per_1000rps": vcpu(mesh), "control_vcpu_per_1000rps": vcpu(control),
        "short_rounds": sum(v["short_rounds"] for v in variants.values()),
        "errors": sum(v["errors"] for v in variants.values()),
        "background_cores": _median([r["background_cores"] for v in variants.values() for r in v["rounds"]]),
    }


def summarize(entries: Mapping[int, Mapping[int, list[dict[str, Any]]]],
              samples: Mapping[int, Mapping[int, list[int]]], *, status: str, reason: str | None,
              servers: Mapping[int, Sequence[str]], settings: Mapping[str, Any],
              loadavg: Mapping[str, list[float]]) -> dict[str, Any]:
    """latest.json's ``fixed_rate``: settings, load averages and, per rate, both variants and the differences."""
    out: dict[str, Any] = {"status": status, "reason": reason, "settings": dict(settings), "loadavg": dict(loadavg),
                           "rates": {}}
    if status != "ok":
        return out
    for rate, by_n in entries.items():
        variants = {n: _variant(n, rounds, list(samples[rate][n]), servers.get(n, ())) for n, rounds in by_n.items()}
        out["rates"][str(rate)] = _at_rate(rate, variants)
    return out


def fixed_rate_values(section: Mapping[str, Any] | None) -> tuple[dict[str, float | None], dict[str, str]]:
    """The values of issue 12's fixed-rate targets (at TARGET_RATE) and a note for each: the load around them."""
    values: dict[str, float | None] = {t.name: None for t in FIXED_RATE_TARGETS}
    notes: dict[str, str] = {}
    at = (section or {}).get("rates", {}).get(str(TARGET_RATE)) if section and section.get("status") == "ok" else None
    if section and section.get("status") == "ok" and at is None:
        notes = {t.name: f"{TARGET_RATE} rps was not among the rates" for t in FIXED_RATE_TARGETS}
    if at is None:
        return values, notes
    values.update(fixed_added_p50_ms=at["added_ms"]["p50"], fixed_added_p90_ms=at["added_ms"]["p90"],
                  fixed_added_p99_ms=at["added_ms"]["p99"],
                  fixed_server_chain_us_per_call=at["server_chain_us_per_call"],
                  fixed_mesh_vcpu_per_1000rps=at["mesh_vcpu_per_1000rps"])
    assert section is not None
    load = section["loadavg"]
    note = (f"load average {load['before'][0]:.2f} before, {load['after'][0]:.2f} after; other processes "
            f"{at['background_cores'] or 0:.2f} cores during the rounds (median)")
    if at["short_rounds"] or at["errors"]:
        note += f"; {at['short_rounds']} short round(s), {at['errors']} error(s)"
    return values, dict.fromkeys(values, note)


# ----------------------------------------------------------------------------- the terminal


def _ms(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:5.0f} us = {value / 1000:.3f}"


def print_fixed_rate(section: Mapping[str, Any]) -> None:
    s, load = section["settings"], section["loadavg"]
    print("fixed rate, open loop: latency from each call's intended send time (no coordinated omission); "
          "v2 bare grpc.aio + mTLS vs v3 the whole chain")
    if section["status"] != "ok":
        print(f"  {section['status']}: {section['reason']}")
        return
    print(f"  {s['rounds']} interleaved rounds of {s['round_seconds']:g} s per variant and rate, medians of rounds; "
          f"load average (1/5/15 min) before {' '.join(f'{x:.2f}' for x in load['before'])}, "
          f"after {' '.join(f'{x:.2f}' for x in load['after'])}")
    head = (f"  {'rate/s':>6}  {'':<14} {'achieved/s':>10} " + " ".join(f"{LABELS[p] + ' ms':>9}" for p in PERCENTILES)
            + f" {'errors':>6} {'short':>5} {'other cores':>11}")
    print(head)
    for key, at in section["rates"].items():
        for n, label in ((BARE, "v2 bare mTLS"), (CHAIN, "v3 whole chain")):
            v = at["variants"][VARIANTS[n].key]
            print(f"  {key if n == BARE else '':>6}  {label:<14} {v['achieved_rps'] or 0:10.1f} "
                  + " ".join(f"{_ms(v[f'{p}_ms']):>9}" for p in PERCENTILES)
                  + f" {v['errors']:>6} {v['short_rounds']:>5} {v['background_cores'] or 0:11.2f}")
        print(f"  {'':>6}  {'added (v3-v2)':<14} {'':>10} "
              + " ".join(f"{_ms(at['added_ms'][p], True):>9}" for p in PERCENTILES)
              + "   (pooled p99.9 " + _ms(at["added_pooled_ms"]["p999"], True) + ")")
    print("  mesh CPU per call, and in vCPU per 1000 rps (= us / 1000):")
    print(f"  {'rate/s':>6}  {'server chain (agent v3-v2)':>27} {'client chain (generator v3-v2)':>31} "
          f"{'mesh (server+client)':>22} {'control plane (v3)':>20}")
    for key, at in section["rates"].items():
        print(f"  {key:>6}  {_us(at['server_chain_us_per_call']):>27} {_us(at['client_chain_us_per_call']):>31} "
              f"{_us(at['mesh_us_per_call']):>22} {_us(at['control_us_per_call']):>20}")
    _print_anchors(section)


def _print_anchors(section: Mapping[str, Any]) -> None:
    at = section["rates"].get(str(TARGET_RATE))
    print(f"  beside the published anchors (added over no mesh at {TARGET_RATE} rps, on their own hardware):")
    print(f"    {'':<36} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7}")
    if at:
        a = at["added_ms"]
        print(f"    {'agentmesh, this run (Python, 2 vCPU)':<36} " + " ".join(
            f"{_ms(a[p], True):>7}" for p in PERCENTILES))
    for anchor in ANCHORS:
        print(f"    {anchor.name:<36} {_ms(anchor.p50_ms, True):>7} {_ms(anchor.p90_ms, True):>7} "
              f"{_ms(anchor.p99_ms, True):>7} {'-':>7}   {anchor.setup}; {anchor.source}")
    if at:
        print(f"    CPU: agentmesh {at['mesh_vcpu_per_1000rps'] or 0:.3f} vCPU per 1000 rps (server + client chains), "
              f"control plane {at['control_vcpu_per_1000rps'] or 0:.3f}; " + "; ".join(
                  f"{c.name} {c.vcpu_per_1000rps:.2f} ({c.setup})" for c in CPU_ANCHORS))
    values, notes = fixed_rate_values(section)
    print("  issue 12 targets at the fixed rate:")
    for t in FIXED_RATE_TARGETS:
        value = values[t.name]
        mark = "n/a " if value is None else "MET " if value <= t.bound else "MISS"
        print(f"    [{mark}] {t.description}: {'-' if value is None else f'{value:.3f}'}")
    if notes:
        print(f"    ({next(iter(notes.values()))})")
