"""Summarize tck_matrix.sh results (pytest-json-report files).

    python summarize.py DIR                 counts per run, and the failures
    python summarize.py BASE_DIR MESH_DIR   both, side by side, and what fails in MESH but passes in BASE
"""

from __future__ import annotations

import json
import pathlib
import sys

KEYS = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


def load(d: pathlib.Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(d.glob("*.json")) if p.name != "agent-card.json"}


def outcomes(report: dict) -> dict[str, str]:
    out = {}
    for t in report.get("tests", []):
        o = t["outcome"]
        for phase in ("setup", "call", "teardown"):
            if t.get(phase, {}).get("outcome") == "failed" and o != "failed":
                o = "error" if phase != "call" else o
        out[t["nodeid"]] = o
    return out


def message(report: dict, nodeid: str) -> str:
    for t in report.get("tests", []):
        if t["nodeid"] == nodeid:
            for phase in ("setup", "call", "teardown"):
                crash = t.get(phase, {}).get("crash")
                if crash and t[phase].get("outcome") == "failed":
                    return crash.get("message", "").replace("\n", " ")[:400]
    return ""


def counts(report: dict) -> str:
    s = report.get("summary", {})
    return " ".join(f"{k} {s[k]}" for k in KEYS if s.get(k))


def main() -> None:
    dirs = [pathlib.Path(a) for a in sys.argv[1:]]
    runs = [load(d) for d in dirs]
    names = sorted({n for r in runs for n in r})
    print("| run | " + " | ".join(str(d) for d in dirs) + " |")
    print("|---|" + "---|" * len(dirs))
    for n in names:
        print(f"| {n} | " + " | ".join(counts(r[n]) if n in r else "-" for r in runs) + " |")
    if len(runs) == 1:
        for n in names:
            for nodeid, o in outcomes(runs[0][n]).items():
                if o in ("failed", "error"):
                    print(f"{n}\t{o}\t{nodeid}\t{message(runs[0][n], nodeid)}")
        return
    base, mesh = runs
    print("\n## failing through the mesh, passing in the baseline")
    for n in names:
        if n not in base or n not in mesh:
            continue
        b, m = outcomes(base[n]), outcomes(mesh[n])
        for nodeid, o in m.items():
            if o in ("failed", "error") and b.get(nodeid) in ("passed", "xfailed", "skipped"):
                print(f"- [{n}] {nodeid} (baseline: {b.get(nodeid)})\n    {message(mesh[n], nodeid)}")
    print("\n## passing through the mesh, failing in the baseline")
    for n in names:
        if n not in base or n not in mesh:
            continue
        b, m = outcomes(base[n]), outcomes(mesh[n])
        for nodeid, o in m.items():
            if o == "passed" and b.get(nodeid) in ("failed", "error"):
                print(f"- [{n}] {nodeid}")


if __name__ == "__main__":
    main()
