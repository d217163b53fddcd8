"""The payload guard's worst cases: milliseconds per ``PayloadGuard.check`` of requests just under the default
size limit (1 MiB), one per class of input that costs the guard work: plain ASCII, text full of pattern
anchors or of the letters they start with, long NFKD expansions (U+FDFA makes 18 characters of one,
U+3316, ligatures, circled numbers), combining marks, invisible characters, look-alikes, a huge Struct,
deep nesting, many small strings, and ordinary text (prose, HTML, code, base64) for comparison.

Each request is parsed from its serialisation first, as a server hands it to the guard. Each case
reports the median (and the best) wall time of a few runs, the median CPU time of this process (what the
guard itself spent, less what a busy machine adds), and what the guard answered ("pass", a pattern, or
"too-costly" when the work budget refused it). ``python -m benchmarks.guard`` runs it alone; ``make
bench`` runs it as the phase ``guard`` (in latest.json). Issue 13 item 2's target: every case under
100 ms; the guard aims at 70 ms, so that a busy machine still meets it.
"""

from __future__ import annotations

import base64
import os
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from agentmesh.config import GuardConfig
from agentmesh.errors import PayloadTooCostly
from agentmesh.guard import PayloadGuard
from agentmesh.v1 import agent_pb2

__all__ = ["CASES", "print_guard", "run_guard"]

LIMIT = 1024 * 1024
TARGET_MS = 100.0


def _task(text: str) -> agent_pb2.Task:
    return agent_pb2.Task(id="t", input=[agent_pb2.Part(text=text)])


def _fill(unit: str) -> agent_pb2.Task:
    """One text field of ``unit`` repeated to just under the limit."""
    n = (LIMIT - 64) // len(unit.encode())
    return _task(unit * n)


def _struct() -> agent_pb2.Task:
    t = agent_pb2.Task(id="t")
    t.input.add().data.update({f"k{i}": "" for i in range(LIMIT // 16)})
    return t


def _list_of_empty_values() -> struct_pb2.Value:
    return struct_pb2.Value(list_value=struct_pb2.ListValue(values=[struct_pb2.Value()] * (LIMIT // 2 - 8)))


def _deep() -> struct_pb2.Value:
    """Many branches, each nested just within MAX_DEPTH."""
    leaf = struct_pb2.Value(string_value="x")
    for _ in range(30):
        leaf = struct_pb2.Value(list_value=struct_pb2.ListValue(values=[leaf]))
    size = leaf.ByteSize() + 4
    return struct_pb2.Value(list_value=struct_pb2.ListValue(values=[leaf] * ((LIMIT - 16) // size)))


def _many_strings() -> agent_pb2.AgentCard:
    return agent_pb2.AgentCard(access=[agent_pb2.AccessRule(roles=["a"] * (LIMIT // 3 - 8))])


_ANCHORS = "ignore disregard forget override bypass skip reveal print show output repeat leak display dump expose " \
           "tell give send you do developer begin end <| [inst] <<"


def _distinct(units: str, n: int) -> str:
    """``n`` characters drawn from ``units`` at random (seeded): no two chunks alike, so nothing is reused."""
    rng = random.Random(13)
    return "".join(rng.choice(units) for _ in range(n))


def _dense(unit: str, per: int) -> agent_pb2.Task:
    """``unit`` repeated to just under the limit (in bytes), every anchor word present at its end."""
    n = (LIMIT - 64 - len(_ANCHORS)) // len(unit.encode())
    return _task(unit * n + " " + _ANCHORS)


def _code() -> agent_pb2.Task:
    here = os.path.dirname(os.path.abspath(__file__))
    text = "".join(open(os.path.join(here, f), encoding="utf-8").read() for f in sorted(os.listdir(here))
                   if f.endswith(".py"))
    return _task((text * (LIMIT // max(len(text.encode()), 1) + 1)).encode()[:LIMIT - 64].decode("utf-8", "ignore"))


#: case -> a request just under 1 MiB
CASES: dict[str, Callable[[], Message]] = {
    "ascii": lambda: _fill("a"),
    "ascii-prose": lambda: _fill("Summarize the quarterly report and send it to the team by the end of day. "),
    "ascii-anchors": lambda: _fill("ignore print send end now "),
    "ascii-anchor-runs": lambda: _fill("<<<<##"),
    "ascii-long-match": lambda: _task("ignore " + "all " * (LIMIT // 4 - 16)),
    "ascii-dense-first": lambda: _dense("e", 1),
    "ascii-dense-mixed": lambda: _task(_distinct("idfobsrpletgy<[\n", LIMIT - 64 - len(_ANCHORS)) + _ANCHORS),
    "html": lambda: _fill('<div class="row"><a href="/docs/end">Send the report</a> <b>now</b></div>\n'),
    "code": _code,
    "base64": lambda: _task(base64.b64encode(random.Random(13).randbytes((LIMIT - 64) * 3 // 4)).decode()),
    "nfkd-fdfa": lambda: _fill("\ufdfa"),
    "nfkd-fdfa-half": lambda: _task("a" * (LIMIT // 2) + "\ufdfa" * (LIMIT // 6 - 32)),
    "nfkd-3316": lambda: _fill("\u3316"),
    "nfkd-33af": lambda: _fill("\u33af"),
    "nfkd-fb2c": lambda: _fill("\ufb2c"),
    "ligature-ffi": lambda: _fill("\ufb03"),
    "circled-(20)": lambda: _fill("\u2487"),
    "combining": lambda: _fill("a\u0301"),
    "combining-only": lambda: _fill("\u0301"),
    "zero-width": lambda: _fill("\u200b"),
    "cyrillic": lambda: _fill("\u0430"),
    "cjk": lambda: _fill("\u4e2d"),
    "astral-marks": lambda: _fill("a\U000e0100"),
    "fdfa-distinct": lambda: _task(_distinct("\ufdfa\ufdfb\u3316\u33af", (LIMIT - 64) // 3)),
    "projected-dense": lambda: _dense("\u33af\u33c8", 3),
    "letters-distinct": lambda: _task(_distinct("\u33af\u33c8\u3250\ufb03\u2487\u33d4\u32cc", (LIMIT - 256) // 3)
                                      + _ANCHORS),
    "struct-huge": _struct,
    "list-of-empty": _list_of_empty_values,
    "nested-deep": _deep,
    "many-strings": _many_strings,
}


def _time(guard: PayloadGuard, message: Message, runs: int) -> tuple[list[float], list[float], str]:
    """Wall and CPU milliseconds of each run, and the outcome."""
    wall, cpu, outcome = [], [], ""
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            r = guard.check(message)
            outcome = r.pattern or "pass"
        except PayloadTooCostly:
            outcome = "too-costly"
        cpu.append((time.process_time() - c0) * 1e3)
        wall.append((time.perf_counter() - t0) * 1e3)
    return wall, cpu, outcome


def run_guard(runs: int = 7, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Median ms per check of each case, its outcome, the worst case and whether it is under TARGET_MS."""
    guard = PayloadGuard(GuardConfig())  # the defaults: 1 MiB, default patterns, block
    cases: dict[str, dict[str, Any]] = {}
    for name, make in CASES.items():
        built = make()
        message = type(built).FromString(built.SerializeToString())  # as a server parses it
        assert message.ByteSize() <= LIMIT, name
        wall, cpu, outcome = _time(guard, message, runs)
        ms = statistics.median(wall)
        cases[name] = {"ms": round(ms, 2), "best_ms": round(min(wall), 2), "cpu_ms": round(statistics.median(cpu), 2),
                       "bytes": message.ByteSize(), "outcome": outcome}
        if log is not None:
            c = cases[name]
            log(f"  guard {name:<18} {ms:7.1f} ms (best {c['best_ms']:5.1f}, cpu {c['cpu_ms']:5.1f})  {outcome}")
    worst = max(cases, key=lambda k: cases[k]["ms"])
    return {"status": "ok", "runs": runs, "target_ms": TARGET_MS, "cases": cases, "worst": worst,
            "worst_ms": cases[worst]["ms"], "met": cases[worst]["ms"] < TARGET_MS,
            "load_average": list(os.getloadavg())}


def print_guard(d: dict[str, Any]) -> None:
    load = ", ".join(f"{x:.2f}" for x in d.get("load_average", ()))
    print(f"payload guard, worst 1 MiB inputs (median of {d['runs']}): worst {d['worst']} {d['worst_ms']:.1f} ms "
          f"(target < {d['target_ms']:.0f} ms: {'met' if d['met'] else 'NOT met'}; load average {load})")


if __name__ == "__main__":
    result = run_guard(log=print)
    print_guard(result)
