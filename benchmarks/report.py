"""Medians, ratios and targets from the raw rounds; the terminal table, latest.json and latest.png."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.anchors import FIXED_RATE_TARGETS
from benchmarks.fixedreport import fixed_rate_values, print_fixed_rate
from benchmarks.idlecost import print_idle
from benchmarks.settings import BRIDGE_VARIANTS, VARIANTS

__all__ = ["aggregate_variant", "compute_targets", "machine", "print_delegation", "print_report", "write_chart",
           "write_json"]

#: 2: "lifecycle" (renewal under load, revocation propagation, join cost) and its three targets
#: 3: "delegation" (a 3-hop delegated chain against the undelegated one, its micro-benchmarks, the
#:    exchange RPC) and its target
#: 4: variant 7 (the REST bridge with bridge.txn_reuse); the control plane counted in the mesh variants' server
#:    CPU (a "control" process); per variant the median server_cpu_us_per_call_by_process and other_bench_cores
#:    (the harness's idle servers, no longer in background_cores); ratios v7_rps_vs_v6, v7_p99_vs_v6, v7_rps_vs_v5
#: 5: "fixed_rate" (the open-loop phase: per rate, both variants' percentiles from the intended send time, the
#:    added latency, mesh CPU per call and per 1000 rps, load averages); variant 8 (the forwarding FastAPI
#:    gateway) and ratios v5_rps_vs_v8, v7_rps_vs_v8 (+ p99); per variant rps_vs_v8; issue 12's targets
#: 6: "lifecycle"."idle" (idlecost.py: each idle process's CPU in ms per second, by thread, and the CPU of one
#:    thread wake-up on the machine)
SCHEMA = 6


def _median(values: Sequence[float | None]) -> float | None:
    real = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(real) if real else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    return {
        "cpu_model": model or platform.processor() or None,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "cryptography": _version("cryptography"),
        "uvicorn": _version("uvicorn"),
        "fastapi": _version("fastapi"),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def aggregate_variant(number: int, rounds: list[dict[str, Any]], *, status: str = "ok",
                      reason: str | None = None, servers: Sequence[str] = ()) -> dict[str, Any]:
    """One variant's entry of latest.json: medians over its rounds, plus the rounds themselves."""
    v = VARIANTS[number]
    entry: dict[str, Any] = {
        "number": number, "key": v.key, "title": v.title, "protocol": v.protocol, "status": status,
        "reason": reason, "server_processes": list(servers), "rps": None, "p50_ms": None, "p99_ms": None,
        "server_cpu_us_per_call": None, "server_cpu_us_per_call_by_process": {}, "client_cpu_us_per_call": None,
        "background_cores": None, "other_bench_cores": None, "calls": 0, "errors": 0,
        "rounds": rounds,
    }
    if status != "ok" or not rounds:
        return entry
    names = list(dict.fromkeys(k for r in rounds for k in r.get("server_cpu_us_per_call_by_process", {})))
    entry.update(
        rps=_median([r["rps"] for r in rounds]),
        p50_ms=_median([r["p50_ms"] for r in rounds]),
        p99_ms=_median([r["p99_ms"] for r in rounds]),
        server_cpu_us_per_call=_median([r["server_cpu_us_per_call"] for r in rounds]),
        # each process's own median (they need not add up to server_cpu_us_per_call, the median of the sums)
        server_cpu_us_per_call_by_process={
            name: _median([r.get("server_cpu_us_per_call_by_process", {}).get(name) for r in rounds])
            for name in names},
        client_cpu_us_per_call=_median([r.get("client_cpu_us_per_call") for r in rounds]),
        background_cores=_median([r.get("background_cores") for r in rounds]),
        other_bench_cores=_median([r.get("other_bench_cores") for r in rounds]),
        calls=sum(r["calls"] for r in rounds),
        errors=sum(r["errors"] for r in rounds),
    )
    return entry


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compute_ratios(variants: Mapping[str, dict[str, Any]]) -> dict[str, float | None]:
    by_n = {v["number"]: v for v in variants.values()}

    def get(n: int, metric: str) -> float | None:
        v = by_n.get(n)
        return v[metric] if v is not None else None

    ratios: dict[str, float | None] = {}
    for n in (1, 3, 4):
        ratios[f"v{n}_rps_vs_v2"] = _ratio(get(n, "rps"), get(2, "rps"))
        ratios[f"v{n}_p99_vs_v2"] = _ratio(get(n, "p99_ms"), get(2, "p99_ms"))
    for n in BRIDGE_VARIANTS:  # against both gateways users build: answering locally (6), forwarding (8)
        for g in (6, 8):
            ratios[f"v{n}_rps_vs_v{g}"] = _ratio(get(n, "rps"), get(g, "rps"))
            ratios[f"v{n}_p99_vs_v{g}"] = _ratio(get(n, "p99_ms"), get(g, "p99_ms"))
    ratios["v7_rps_vs_v5"] = _ratio(get(7, "rps"), get(5, "rps"))  # what bridge.txn_reuse buys
    # the chain's own cost: the mesh member against bare grpc.aio on the loop the member runs on (uvloop)
    ratios["v3_rps_vs_v9"] = _ratio(get(3, "rps"), get(9, "rps"))
    ratios["v9_rps_vs_v2"] = _ratio(get(9, "rps"), get(2, "rps"))  # what the loop alone buys bare grpc.aio
    c3, c2 = get(3, "server_cpu_us_per_call"), get(2, "server_cpu_us_per_call")
    ratios["chain_server_cpu_us_per_call"] = c3 - c2 if c3 is not None and c2 is not None else None
    k3, k2 = get(3, "client_cpu_us_per_call"), get(2, "client_cpu_us_per_call")
    ratios["chain_client_cpu_us_per_call"] = k3 - k2 if k3 is not None and k2 is not None else None
    for v in variants.values():  # each variant also carries its own ratio(s)
        v["rps_vs_v2"] = _ratio(v["rps"], get(2, "rps")) if v["protocol"] == "grpc" else None
        v["rps_vs_v6"] = _ratio(v["rps"], get(6, "rps")) if v["number"] in BRIDGE_VARIANTS else None
        v["rps_vs_v8"] = _ratio(v["rps"], get(8, "rps")) if v["number"] in BRIDGE_VARIANTS else None
    return ratios


_TARGETS = (
    # name (a key of the values: ratios, micro, rotation, ... results), description, op, bound
    ("v3_rps_vs_v2", "variant 3 rps >= 0.85x variant 2 (concurrency 16)", ">=", 0.85),
    ("closed_loop_v3_vs_v2_floor", "issue 12: closed-loop variant 3 rps >= 0.70x variant 2", ">=", 0.70),
    ("v3_p99_vs_v2", "variant 3 p99 <= 1.25x variant 2", "<=", 1.25),
    ("chain_server_cpu_us_per_call", "steady-state chain <= 60 us server CPU per call (v3 - v2)", "<=", 60.0),
    ("v5_rps_vs_v6", "variant 5 (bridge) rps >= 1.0x variant 6 (FastAPI gateway)", ">=", 1.0),
    ("v5_rps_vs_v8", "issue 12: variant 5 (bridge) rps >= 1.4x variant 8 (forwarding FastAPI gateway)", ">=", 1.4),
    ("v7_rps_vs_v8", "issue 12: variant 7 (bridge, txn_reuse) rps >= 1.4x variant 8 (forwarding gateway)", ">=",
     1.4),
    ("bridge_v5_vs_local_gateway", "issue 12: variant 5 (bridge) rps >= 0.9x variant 6 (local-answer gateway)",
     ">=", 0.9),
    ("bridge_v7_vs_local_gateway", "issue 12: variant 7 (bridge, txn_reuse) rps >= 0.9x variant 6", ">=", 0.9),
    ("ca_certs_per_s", "CA issues >= 2,000 leaf certificates/s (record=True)", ">=", 2000.0),
    ("rotation_failed_calls", "0 failed calls while rotating every certificate under load", "==", 0.0),
    ("renewal_failed_calls", "0 failed calls while members renew themselves under load (+ a CA rotation)", "==",
     0.0),
    ("revocation_propagation_s", "revocation reaches the mesh in <= 2 s (max over trials, default settings)", "<=",
     2.0),
    ("join_control_ms", "a join costs the control plane < 10 ms (median, in-process)", "<", 10.0),
    ("delegation_cpu_us_per_hop", "a delegated call adds < 150 us CPU per hop (3 hops, same transaction)", "<",
     150.0),
    *((t.name, f"issue 12: {t.description}", "<=", t.bound) for t in FIXED_RATE_TARGETS),
)


def _ok(section: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return section if section and section.get("status") == "ok" else None


def compute_targets(ratios: Mapping[str, float | None], micro: Mapping[str, Any] | None,
                    rotation: Mapping[str, Any] | None,
                    lifecycle: Mapping[str, Any] | None = None,
                    delegation: Mapping[str, Any] | None = None,
                    fixed_rate: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    values: dict[str, float | None] = dict(ratios)
    values["closed_loop_v3_vs_v2_floor"] = ratios.get("v3_rps_vs_v2")
    values["bridge_v5_vs_local_gateway"] = ratios.get("v5_rps_vs_v6")
    values["bridge_v7_vs_local_gateway"] = ratios.get("v7_rps_vs_v6")
    fixed_values, fixed_notes = fixed_rate_values(fixed_rate)
    values.update(fixed_values)
    values["ca_certs_per_s"] = micro.get("ca_certs_per_s") if micro else None
    values["rotation_failed_calls"] = float(rot["failed_calls"]) if (rot := _ok(rotation)) else None
    life = lifecycle or {}
    values["renewal_failed_calls"] = float(ren["failed_calls"]) if (ren := _ok(life.get("renewal"))) else None
    prop = _ok(life.get("propagation"))
    values["revocation_propagation_s"] = (prop["propagation"]["max_s"]
                                          if prop and not prop["propagation"]["missing"] else None)
    values["join_control_ms"] = join["control"]["median_ms"] if (join := _ok(life.get("join"))) else None
    values["delegation_cpu_us_per_hop"] = (deleg["added_per_hop"]["same_transaction"]["cpu_us"]
                                           if (deleg := _ok(delegation)) else None)
    notes: dict[str, str] = dict(fixed_notes)
    if deleg:  # a median of paired differences: its confidence interval says how sure the verdict is
        low, high = deleg["added_per_hop"]["same_transaction"]["cpu_us_ci95"]
        notes["delegation_cpu_us_per_hop"] = f"95% CI {low:.0f}-{high:.0f} us: {deleg['target_verdict']}"
    out = []
    for name, description, op, bound in _TARGETS:
        value = values.get(name)
        met = None
        if value is not None:
            met = {">=": value >= bound, "<=": value <= bound, "<": value < bound, "==": value == bound}[op]
        out.append({"name": name, "description": description, "op": op, "target": bound, "value": value,
                    "met": met, "note": notes.get(name)})
    return out


# ----------------------------------------------------------------------------- output


def _f(value: float | None, fmt: str = ".0f") -> str:
    return "-" if value is None else format(value, fmt)


def print_report(doc: Mapping[str, Any]) -> None:
    m = doc["machine"]
    s = doc["settings"]
    print()
    print(f"agentmesh benchmark ({doc['mode']}): {m['cpu_model']}, {m['cores']} cores, Python {m['python']}, "
          f"grpcio {m['grpcio']}, {m['date']}")
    if doc["variants"]:
        print(f"concurrency {s['concurrency']}, {s['rounds']} interleaved rounds of {s['round_seconds']} s per variant "
              f"(medians), HTTP load: {s['http_load']}")
        print()
        head = f"{'variant':<44} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'srv us/call':>12} {'cli us/call':>12} " \
               f"{'ratio':>17} {'errors':>7}"
        print(head)
        print("-" * len(head))
        for v in doc["variants"].values():
            name = f"{v['number']} {v['title']}"
            if v["status"] != "ok":
                print(f"{name:<44} {v['status']}: {v['reason']}")
                continue
            ratio = " ".join(f"{v[f'rps_vs_v{g}']:.2f}x v{g}" for g in (6, 8) if v.get(f"rps_vs_v{g}") is not None) \
                or (f"{v['rps_vs_v2']:.2f}x v2" if v.get("rps_vs_v2") is not None else "")
            print(f"{name:<44} {_f(v['rps']):>8} {_f(v['p50_ms'], '.2f'):>8} {_f(v['p99_ms'], '.2f'):>8} "
                  f"{_f(v['server_cpu_us_per_call']):>12} {_f(v['client_cpu_us_per_call']):>12} {ratio:>17} "
                  f"{v['errors']:>7}")
        r = doc.get("ratios") or {}
        if r.get("v3_rps_vs_v9") is not None:
            print(f"the chain's own cost, on the loop members run on (uvloop): variant 3 = {r['v3_rps_vs_v9']:.2f}x "
                  f"variant 9; the loop alone gives bare grpc.aio {_f(r.get('v9_rps_vs_v2'), '.2f')}x variant 2")
        split = [v for v in doc["variants"].values()
                 if v["status"] == "ok" and len(v.get("server_cpu_us_per_call_by_process") or {}) > 1]
        if split:
            print("server us/call by process (medians): " + "; ".join(
                f"v{v['number']} " + ", ".join(f"{name} {_f(us)}"
                                                for name, us in v["server_cpu_us_per_call_by_process"].items())
                for v in split))
        print("background cores (medians; other jobs on the machine, not this harness): " + ", ".join(
            f"v{v['number']} {_f(v.get('background_cores'), '.2f')}" for v in doc["variants"].values()
            if v["status"] == "ok"))
        busy = [v for v in doc["variants"].values() if (v.get("background_cores") or 0) > 0.25]
        if busy:
            print(f"note: other jobs used CPU during the rounds of variant(s) "
                  f"{', '.join(str(v['number']) for v in busy)} (median > 0.25 cores): numbers are noisier")
    if doc.get("fixed_rate"):
        print()
        print_fixed_rate(doc["fixed_rate"])
    micro = doc.get("micro")
    if micro:
        print()
        print("chain stages (in-process, us per op)")
        for key, us in micro["stages_us"].items():
            print(f"  {micro['stage_descriptions'][key]:<64} {us:8.2f}")
        print(f"  {'sum of the steady-state stages':<64} {micro['steady_state_sum_us']:8.2f}")
        print(f"  {'span CPU incl. the JSONL exporter thread':<64} {micro['audit_span_cpu_us_incl_export']:8.2f}")
        chains = micro.get("chains_in_process")
        if chains:
            print(f"  {'whole server chain in-process, caller thread':<64} {chains['server_chain_us']:8.2f}")
            print(f"  {'whole server chain in-process, CPU incl. export + metrics threads':<64} "
                  f"{chains['server_chain_cpu_us_incl_export']:8.2f}")
            print(f"  {'whole client chain in-process, caller thread':<64} {chains['client_chain_us']:8.2f}")
            print(f"  {'whole client chain in-process, CPU incl. export thread':<64} "
                  f"{chains['client_chain_cpu_us_incl_export']:8.2f}")
        cost = micro.get("metrics_cost")
        if cost:
            print(f"  {'metrics: AuditMetrics.record_server, per call served':<64} {cost['record_server_us']:8.2f}")
            print(f"  {'metrics: AuditMetrics.record_client, per call made':<64} {cost['record_client_us']:8.2f}")
            for side in ("server", "client"):
                c = cost[f"{side}_chain"]
                what = f"whole {side} chain with metrics ({cost['rounds']} interleaved rounds)"
                print(f"  {what:<64} {c['with_us']:8.2f}; without {c['without_us']:.2f}: "
                      f"{c['added_us']:+.2f} us, x{c['ratio']:.3f}")
        print(f"  CA: {micro['ca_certs_per_s']:.0f} leaf certificates/s (record=True)")
    rot = doc.get("rotation")
    if rot:
        print()
        if rot["status"] == "ok":
            print(f"rotation under load (max_connection_age {rot['max_connection_age']}): "
                  f"{rot['calls']} calls OK, {rot['failed_calls']} failed; the agent serves its newest "
                  f"certificate: {rot['server_serves_latest_cert']}; client identity reloads: "
                  f"{rot['client_identity_version']}")
            for name, p in rot["phases"].items():
                print(f"  {name:<13} {p['rotations']} rotations of {', '.join(p['rotated'])} in {p['seconds']:.0f} s: "
                      f"{p['calls']} OK, {p['failed_calls']} failed {p['error_samples'] or ''}")
        else:
            print(f"rotation under load: {rot['status']}: {rot.get('reason')}")
    if doc.get("lifecycle"):
        print()
        _print_lifecycle(doc["lifecycle"])
    if doc.get("delegation"):
        print()
        print_delegation(doc["delegation"])
    print()
    print("targets (reported, not asserted)")
    for t in doc["targets"]:
        mark = {True: "MET ", False: "MISS", None: "n/a "}[t["met"]]
        note = f" ({t['note']})" if t.get("note") else ""
        print(f"  [{mark}] {t['description']}: {_f(t['value'], '.2f')}{note}")
    print()


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _print_lifecycle(life: Mapping[str, Any]) -> None:
    print("identity lifecycle")
    ren = life.get("renewal")
    if ren and ren["status"] == "ok":
        print(f"  renewal under load (leaves of {ren['leaf_lifetime_s']:g} s, max_connection_age "
              f"{ren['max_connection_age']}, CA rotated after {ren['rotated_after_s']:g} s, {ren['seconds']:g} s of "
              f"load): {ren['calls']} calls OK, {ren['failed_calls']} failed {ren['error_samples'] or ''}")
        print("    renewals (after the rotation): " + ", ".join(
            f"{m} {n} ({ren['renewals_after_rotation'][m]})" for m, n in ren["renewals"].items())
              + f"; the agent serves a certificate of the new intermediate: {ren['agent_serves_new_intermediate']}")
    elif ren:
        print(f"  renewal under load: {ren['status']}: {ren.get('reason')}")
    prop = life.get("propagation")
    if prop and prop["status"] == "ok":
        print(f"  revocation propagation over {len(prop['trials'])} trials (control plane polls every "
              f"{prop['poll_s']:g} s), median / max:")
        for key, label in (("observer_refuses", "a member's trust data names it"),
                           ("call_refused", "a new call from it fails"),
                           ("stream_cut", "a stream it holds open is cut"),
                           ("propagation", "all three")):
            m = prop[key]
            missing = f" ({m['missing']} not seen in time)" if m["missing"] else ""
            print(f"    {label:<34} {_ms(m['median_s']):>8} / {_ms(m['max_s'])}{missing}")
    elif prop:
        print(f"  revocation propagation: {prop['status']}: {prop.get('reason')}")
    if life.get("idle"):
        print_idle(life["idle"])
    join = life.get("join")
    if join and join["status"] == "ok":
        c, rpc, mem = join["control"], join["control_rpc"], join["member"]["key_and_csr"]
        steps = ", ".join(f"{k} {v['median_ms']:.2f}" for k, v in join["control_steps"].items())
        print(f"  join, control side ({join['joins']} joins, in-process): median {c['median_ms']:.2f} ms, "
              f"p95 {c['p95_ms']:.2f} ms (steps, median ms: {steps})")
        if join.get("control_at_history"):
            h = join["control_at_history"]
            print(f"    with {h['tokens_in_file']} tokens in the join-token file: median {h['median_ms']:.2f} ms, "
                  f"p95 {h['p95_ms']:.2f} ms")
        print(f"    the Join RPC on a warm connection (loopback): median {rpc['median_ms']:.2f} ms, "
              f"p95 {rpc['p95_ms']:.2f} ms")
        print(f"  join, member side (new key + CSR): median {mem['median_ms']:.2f} ms, p95 {mem['p95_ms']:.2f} ms")
    elif join:
        print(f"  join cost: {join['status']}: {join.get('reason')}")


_DELEGATION_TITLES = {"undelegated": "undelegated (each member acts for itself)",
                      "same_transaction": "delegated, same transaction (steady state)",
                      "new_transaction": "delegated, new transaction per call (cold)"}


def print_delegation(d: Mapping[str, Any]) -> None:
    """The delegation section: end-to-end 3-hop chain, added CPU per hop, micro-benchmarks, exchange RPC."""
    if d["status"] != "ok":
        print(f"delegation: {d['status']}: {d.get('reason')}")
        return
    print(f"delegation: bridge -> ingestor -> summarizer -> validator ({d['hops']} hops), in-process over real "
          f"sockets, one call at a time, the variants interleaved call by call; {d['rounds']} rounds of "
          f"{d['calls_per_round']} calls of each")
    head = f"  {'per end-to-end call (mean)':<44} {'CPU us':>7} {'loop us':>8} {'wall us':>8} {'p50 ms':>7} " \
           f"{'p90 ms':>7} {'+CPU/hop':>9} {'+loop/hop':>10} {'+wall/hop':>10}"
    print(head)
    for key, v in d["variants"].items():
        a = d["added_per_hop"].get(key)
        extra = f"{a['cpu_us']:9.1f} {a['loop_cpu_us']:10.1f} {a['wall_us']:10.1f}" if a else ""
        print(f"  {_DELEGATION_TITLES.get(key, key):<44} {v['cpu_us_per_call']:7.0f} {v['loop_cpu_us_per_call']:8.0f} "
              f"{v['wall_us_per_call']:8.0f} {v['p50_ms']:7.2f} {v['p90_ms']:7.2f} {extra}")
    print("  (CPU: the whole process, every member and thread; loop: the event-loop thread only; +/hop: median over "
          "the steps of (delegated - undelegated) / 3)")
    for key, a in d["added_per_hop"].items():
        low, high = a["cpu_us_ci95"]
        m_low, m_high = a["cpu_us_mean_ci95"]
        print(f"  {key}: added process CPU per hop {a['cpu_us']:.0f} us (95% CI {low:.0f}-{high:.0f}); mean "
              f"{a['cpu_us_mean']:.0f} us (95% CI {m_low:.0f}-{m_high:.0f}); {a['cpu_ratio_vs_undelegated']:.2f}x "
              f"the undelegated call's CPU")
    a = d["added_per_hop"]["same_transaction"]
    low, high = a["cpu_us_ci95"]
    verdict = {"met": "MET", "not met": "NOT MET",
               "inconclusive": "INCONCLUSIVE (the interval contains the target; point estimate "
                               + ("below" if d["target_met"] else "above") + " it)"}[d["target_verdict"]]
    print(f"  target: < {d['target_us_per_hop']:.0f} us CPU added per hop in steady state (same transaction): "
          f"{a['cpu_us']:.1f} us (95% CI {low:.0f}-{high:.0f}): {verdict}")
    if d["background_cores"] > 0.25:
        print(f"  note: other processes used {d['background_cores']:.2f} cores during the rounds (median): "
              f"numbers are noisier")
    ex = d["exchange"]
    if ex["exchanges"]:
        print(f"  exchange RPC (MeshNode.exchange, warm channel, {ex['exchanges']} exchanges): median "
              f"{ex['median_ms']:.2f} ms, p90 {ex['p90_ms']:.2f} ms, max {ex['max_ms']:.2f} ms; process CPU "
              f"(bridge + control plane) {ex['cpu_us_per_exchange']:.0f} us per exchange")
    busy = d.get("micro_background_cores") or 0.0
    print("  pure pieces (in-process, no gRPC, us per op" + (f"; other processes used {busy:.2f} cores meanwhile)"
                                                            if busy > 0.25 else ")"))
    for key, us in d["micro_us"].items():
        print(f"    {d['micro_descriptions'].get(key, key):<66} {us:8.2f}")


def write_json(doc: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_finite(doc), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


def _finite(obj: Any) -> Any:
    """NaN and infinities (an empty round's percentiles) become null: latest.json stays strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_chart(doc: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [v for v in doc["variants"].values() if v["status"] == "ok"]
    labels = [f"{v['number']}\n{v['key']}" for v in ok]
    colors = ["#7f7f7f" if v["protocol"] == "grpc" and v["number"] <= 2 else
              "#1f77b4" if v["protocol"] == "grpc" else "#ff7f0e" if v["number"] == 5 else
              "#d62728" if v["number"] == 7 else "#8c564b" if v["number"] == 8 else "#bcbd22" for v in ok]
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    m = doc["machine"]
    fig.suptitle(f"agentmesh benchmark ({doc['mode']}) - {m['cpu_model']}, {m['cores']} cores, "
                 f"concurrency {doc['settings']['concurrency']}, {m['date']}", fontsize=10)

    ax = axes[0][0]
    ax.bar(labels, [v["rps"] for v in ok], color=colors)
    ax.set_title("requests/s (median of rounds)")
    for i, v in enumerate(ok):
        ax.annotate(f"{v['rps']:.0f}", (i, v["rps"]), ha="center", va="bottom", fontsize=8)

    ax = axes[0][1]
    xs = range(len(ok))
    ax.bar([x - 0.2 for x in xs], [v["p50_ms"] for v in ok], width=0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], [v["p99_ms"] for v in ok], width=0.4, label="p99")
    ax.set_xticks(list(xs), labels)
    ax.set_title("latency, ms")
    ax.legend()

    ax = axes[1][0]
    ax.bar(labels, [v["server_cpu_us_per_call"] or 0 for v in ok], color=colors)
    ax.axhline((_server_cpu(doc, 2) or 0) + 60, linestyle="--", color="red", linewidth=1)
    ax.set_title("server CPU us/call (dashed: v2 + 60 us target for v3)")

    ax = axes[1][1]
    micro = doc.get("micro")
    if micro:
        names = list(micro["stages_us"])
        ax.barh(names, [micro["stages_us"][n] for n in names], color="#2ca02c")
        ax.set_xscale("log")
        ax.set_title(f"chain stages, us/op (log); CA {micro['ca_certs_per_s']:.0f} certs/s")
        ax.invert_yaxis()
    else:
        ax.axis("off")
    for a in axes.flat:
        a.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _server_cpu(doc: Mapping[str, Any], number: int) -> float | None:
    for v in doc["variants"].values():
        if v["number"] == number:
            return v["server_cpu_us_per_call"]  # type: ignore[no-any-return]
    return None
