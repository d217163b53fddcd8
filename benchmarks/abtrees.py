"""``python -m benchmarks.abtrees --before REF``: this tree against another release, in back-to-back pairs.

On a shared machine whose speed drifts by tens of per cent within minutes, one run of each release says little
about a change of a few per cent. This runs the same quick variants run (``benchmarks.run --quick --variants ...
--no-micro --no-delegation --no-fixed-rate``) in a git worktree of ``REF`` and in this tree, alternately (A B, B A,
A B, ...: drift falls on both), and compares the ratios each run measured between its own variants (e.g.
``v7_rps_vs_v6``: the bridge against the FastAPI gateway, both measured in the same run), pair by pair: a change
that helps moves the ratio in most pairs, whatever the machine did meanwhile. Each run's servers come from its own
tree (``benchmarks.procs`` puts the tree first on ``PYTHONPATH``); the worktree is removed at the end.

    python -m benchmarks.abtrees --before HEAD~1                       # v6, v7, v8: the bridge and the gateways
    python -m benchmarks.abtrees --before v0.9 --variants 2,3 --pairs 6 --ratios v3_rps_vs_v2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.procs import REPO

__all__ = ["main"]

DEFAULT_RATIOS = ("v7_rps_vs_v6", "v7_rps_vs_v8")


def _run(tree: Path, out: Path, a: argparse.Namespace) -> dict[str, Any]:
    argv = [sys.executable, "-m", "benchmarks.run", "--quick", "--variants", a.variants, "--rounds", str(a.rounds),
            "--seconds", str(a.seconds), "--no-micro", "--no-delegation", "--no-fixed-rate", "--no-chart",
            "--out", str(out)]
    done = subprocess.run(argv, cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"benchmarks.run failed in {tree} (exit {done.returncode}): "
                         f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads((out / "latest.json").read_text())
    return result


def _figures(result: dict[str, Any], ratios: Sequence[str]) -> dict[str, float | None]:
    got = result.get("ratios") or {}
    figures: dict[str, float | None] = {name: got.get(name) for name in ratios}
    for key, variant in (result.get("variants") or {}).items():
        for process, us in (variant.get("server_cpu_us_per_call_by_process") or {}).items():
            figures[f"{key} {process} us/call"] = us
    return figures


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.abtrees", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="the release to compare with (any git revision)")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--variants", default="6,7,8")
    p.add_argument("--ratios", default=",".join(DEFAULT_RATIOS), help="ratios of latest.json to compare")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0)
    a = p.parse_args(argv)
    if a.pairs < 1 or a.rounds < 1 or a.seconds <= 0:
        p.error("--pairs and --rounds must be at least 1 and --seconds above 0")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = _parse(argv)
    ratios = [r for r in a.ratios.split(",") if r]
    with tempfile.TemporaryDirectory(prefix="agentmesh-ab-") as tmp:
        before = Path(tmp) / "before"
        made = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(before), a.before],
                              capture_output=True, text=True, check=False)
        if made.returncode != 0:
            raise SystemExit(f"cannot check out {a.before!r}: {made.stderr.strip()}")
        try:
            runs: dict[str, list[dict[str, float | None]]] = {"before": [], "this": []}
            for i in range(a.pairs):
                order = [("before", before), ("this", REPO)]
                for label, tree in order if i % 2 == 0 else reversed(order):
                    figures = _figures(_run(tree, Path(tmp) / f"{label}-{i}", a), ratios)
                    runs[label].append(figures)
                    shown = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) and v < 100 else f"{k} {v:.0f}"
                                      for k, v in figures.items() if v is not None)
                    print(f"pair {i + 1} {label:6s}: {shown}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(before)],
                           capture_output=True, check=False)
    print(f"\n{a.before} against this tree, {a.pairs} pairs (medians; 'higher': the pairs where this tree's is higher)")
    for name in runs["before"][0]:
        pairs = [(b.get(name), t.get(name)) for b, t in zip(runs["before"], runs["this"], strict=True)]
        pairs = [(b, t) for b, t in pairs if b is not None and t is not None]
        if not pairs:
            continue
        higher = sum(t > b for b, t in pairs)
        print(f"  {name:40s} {statistics.median(b for b, _ in pairs):9.2f} -> "
              f"{statistics.median(t for _, t in pairs):9.2f}   higher in {higher}/{len(pairs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
