"""``agentmesh audit show|tail`` on hand-written audit logs, of today's shape and of the one written
before the OpenTelemetry conventions v1.44 (months of logs operators still read)."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import pytest

from agentmesh.cli import audit as cli
from agentmesh.errors import ConfigError

T1 = "4bf92f3577b34da6a3ce929d0e0e4736"
T2 = "0af7651916cd43dd8448eb211c80319c"
INVOKE = "agentmesh.v1.Agent/Invoke"
T0 = 1_700_000_000.0


def _span(trace: str, span: str, parent: str | None, kind: str, service: str, start_ms: float, dur_ms: float,
          attrs: dict[str, Any], *, name: str = INVOKE, status: str = "OK",
          events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    start = T0 + start_ms / 1000
    return {
        "trace_id": trace, "span_id": span, "parent_span_id": parent, "name": name, "kind": kind,
        "start": start, "end": start + dur_ms / 1000, "duration_ms": dur_ms, "service": service,
        "status": status, "attributes": attrs, "events": events or [],
    }


def _server(agent: str, caller: str, decision: str, rule: str, code: str = "OK") -> dict[str, Any]:
    return {
        "rpc.system.name": "grpc", "rpc.method": INVOKE, "rpc.response.status_code": code,
        **({"error.type": code} if code != "OK" else {}), "agentmesh.agent": agent,
        "agentmesh.peer.spiffe_id": f"spiffe://example.org/agent/{caller}",
        "agentmesh.decision": decision, "agentmesh.rule": rule,
    }


def _client(agent: str, target: str, code: str | None = "OK") -> dict[str, Any]:
    return {"rpc.system.name": "grpc", "rpc.method": INVOKE, "agentmesh.agent": agent, "agentmesh.target": target,
            **({"rpc.response.status_code": code} if code else {})}


CODES = {"OK": 0, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8}


def _legacy(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as written before the v1.44 conventions: "/pkg.Service/Method" span names, ``rpc.system``,
    ``rpc.service`` with a short ``rpc.method``, the status as ``rpc.grpc.status_code`` (an int), no
    ``error.type``; and a refused server span's status ERROR."""
    attrs = dict(record["attributes"])
    if "rpc.system.name" not in attrs:
        return record
    service, _, method = attrs.pop("rpc.method").rpartition("/")
    del attrs["rpc.system.name"]
    attrs.pop("error.type", None)
    old = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
    code = attrs.pop("rpc.response.status_code", None)
    if code is not None:
        old["rpc.grpc.status_code"] = CODES[code]
    status = "ERROR" if code not in (None, "OK") else record["status"]
    return {**record, "name": "/" + record["name"], "status": status, "attributes": {**old, **attrs}}


DENIED = {"name": "agentmesh.denied", "time": T0, "attributes": {"stage": "policy", "reason": "deny rule matched"}}

# bridge -> ingestor -> summarizer -> validator (denied), in the order spans end (children first);
# T2 is a lone server span whose parent is not in the log (its caller audits elsewhere).
RECORDS = [
    _span(T1, "00000000000000c3", "00000000000000d2", "client", "summarizer", 6, 2.0,
          _client("summarizer", "validator", "PERMISSION_DENIED"), status="ERROR"),
    _span(T1, "00000000000000d3", "00000000000000c3", "server", "validator", 6.5, 0.9,  # a refusal: status UNSET
          _server("validator", "summarizer", "deny", "no-outside-validator", "PERMISSION_DENIED"), events=[DENIED]),
    _span(T1, "00000000000000e2", "00000000000000d2", "internal", "summarizer", 3, 2.5, {}, name="summarize"),
    _span(T1, "00000000000000d2", "00000000000000c2", "server", "summarizer", 2.5, 7.5,
          _server("summarizer", "ingestor", "allow", "ingestor-to-summarizer")),
    _span(T1, "00000000000000c2", "00000000000000b1", "client", "ingestor", 2, 8.1,
          _client("ingestor", "summarizer")),
    _span(T1, "00000000000000b1", "00000000000000a1", "server", "ingestor", 1, 11.0,
          _server("ingestor", "bridge", "allow", "client-starts-workflow")),
    _span(T1, "00000000000000a1", None, "client", "bridge", 0, 12.3, _client("bridge", "ingestor")),
    _span(T2, "00000000000000f1", "ffffffffffffffff", "server", "ingestor", 100, 0.4,
          _server("ingestor", "bridge", "deny", "", "RESOURCE_EXHAUSTED"),
          events=[{"name": "agentmesh.denied", "attributes": {"stage": "ratelimit", "reason": "bucket empty"}}]),
]

EXPECTED_T1 = f"""\
trace {T1}  (7 spans)
└─ bridge -> ingestor  {INVOKE}  allow (client-starts-workflow)  OK  12.3 ms
   └─ ingestor -> summarizer  {INVOKE}  allow (ingestor-to-summarizer)  OK  8.1 ms
      ├─ summarizer  summarize  OK  2.5 ms
      └─ summarizer -> validator  {INVOKE}  deny (no-outside-validator)  PERMISSION_DENIED  2.0 ms  \
denied[policy]: deny rule matched
"""
EXPECTED_T2 = f"""\
trace {T2}  (1 span)
└─ bridge -> ingestor  {INVOKE}  deny  RESOURCE_EXHAUSTED  0.4 ms  denied[ratelimit]: bucket empty
"""


def _write(path: Path, records: list[dict[str, Any]], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")
    return path


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="agentmesh")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def test_show_renders_each_trace_as_a_caller_callee_tree(tmp_path, capsys):
    log = _write(tmp_path / "audit.jsonl", RECORDS)
    assert _run(["audit", "show", str(log)]) == 0
    assert capsys.readouterr().out == EXPECTED_T1 + "\n" + EXPECTED_T2


def test_show_reads_a_log_written_before_the_v1_44_conventions_and_one_of_both_shapes(tmp_path, capsys):
    legacy = [_legacy(r) for r in RECORDS]
    assert legacy[1]["name"] == "/agentmesh.v1.Agent/Invoke" and legacy[1]["attributes"]["rpc.service"] == \
        "agentmesh.v1.Agent" and legacy[1]["attributes"]["rpc.method"] == "Invoke"
    assert legacy[1]["attributes"]["rpc.grpc.status_code"] == 7 and legacy[1]["status"] == "ERROR"
    old = _write(tmp_path / "old.jsonl", legacy)
    assert _run(["audit", "show", str(old)]) == 0
    assert capsys.readouterr().out == EXPECTED_T1 + "\n" + EXPECTED_T2
    mixed = _write(tmp_path / "mixed.jsonl", [legacy[0], *RECORDS[1:4], *legacy[4:]])  # written across an upgrade
    assert _run(["audit", "show", str(mixed)]) == 0
    assert capsys.readouterr().out == EXPECTED_T1 + "\n" + EXPECTED_T2
    assert _run(["audit", "tail", "-n", "1", str(old)]) == 0
    assert capsys.readouterr().out.split("  ", 3)[3].strip() == \
        f"bridge -> ingestor  {INVOKE}  deny  RESOURCE_EXHAUSTED  0.4 ms  denied[ratelimit]: bucket empty"


def test_show_trace_filters_by_id_prefix(tmp_path, capsys):
    log = _write(tmp_path / "audit.jsonl", RECORDS)
    assert _run(["audit", "show", "--trace", T2[:8].upper(), str(log)]) == 0
    assert capsys.readouterr().out == EXPECTED_T2
    with pytest.raises(ConfigError, match="no trace with an id starting 'deadbeef'"):
        _run(["audit", "show", "--trace", "deadbeef", str(log)])


def test_show_skips_a_bad_line_with_a_warning_naming_it_but_ignores_a_half_written_last_line(tmp_path, capsys):
    good = [json.dumps(r) for r in RECORDS[:2]]
    log = tmp_path / "audit.jsonl"
    log.write_text(f"{good[0]}\n{good[1]}\n", encoding="utf-8")
    assert _run(["audit", "show", str(log)]) == 0
    clean = capsys.readouterr()
    assert clean.err == ""
    for bad, why in [('{"not json": "s3cret', "not valid JSON"), ("[1, 2]", "expected a JSON object"),
                     (json.dumps({**RECORDS[0], "start": "yesterday"}), "'start' missing or not a number")]:
        log.write_text(f"{good[0]}\n{bad}\n{good[1]}\n", encoding="utf-8")
        assert _run(["audit", "show", str(log)]) == 0
        shown = capsys.readouterr()
        assert shown.out == clean.out  # the records on either side of it, as without it
        assert shown.err == f"agentmesh: warning: {log}:2: {why} (skipped)\n"  # (never the line itself)
    _write(log, RECORDS, tail='{"trace_id": "4bf9')
    assert _run(["audit", "show", str(log)]) == 0
    shown = capsys.readouterr()
    assert shown.out == EXPECTED_T1 + "\n" + EXPECTED_T2 and shown.err == ""


def test_show_reports_a_missing_file_and_an_empty_log(tmp_path, capsys):
    with pytest.raises(ConfigError, match="audit log not found"):
        _run(["audit", "show", str(tmp_path / "nope.jsonl")])
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert _run(["audit", "show", str(empty)]) == 0
    assert "no spans" in capsys.readouterr().out


def test_tail_prints_the_last_spans_as_one_line_summaries(tmp_path, capsys):
    log = _write(tmp_path / "audit.jsonl", RECORDS)
    assert _run(["audit", "tail", "-n", "2", str(log)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"2023-11-14T22:13:20.000Z  4bf92f35  client    bridge -> ingestor  {INVOKE}  OK  12.3 ms",
        f"2023-11-14T22:13:20.100Z  0af76519  server    bridge -> ingestor  {INVOKE}  deny  "
        "RESOURCE_EXHAUSTED  0.4 ms  denied[ratelimit]: bucket empty",
    ]


def test_tail_follow_prints_new_lines_survives_truncation_and_stops_on_ctrl_c(tmp_path):
    log = _write(tmp_path / "audit.jsonl", RECORDS[:1])
    lines = [json.dumps(r) + "\n" for r in RECORDS]
    steps = [
        lambda: _append(log, lines[1] + lines[2][:20]),  # one new line and half of the next
        lambda: _append(log, lines[2][20:] + "oops\n"),  # the rest of it, then a bad line
        lambda: None,  # nothing new
        lambda: log.write_text(lines[7], encoding="utf-8"),  # truncated (rotated in place)
    ]

    def fake_sleep(_: float) -> None:
        if not steps:
            raise KeyboardInterrupt
        steps.pop(0)()

    out, err = io.StringIO(), io.StringIO()
    args = argparse.Namespace(file=log, lines=10, follow=True)
    assert cli.cmd_tail(args, out=out, err=err, sleep=fake_sleep) == 0
    names = [line.split()[2] + " " + line.split()[3] for line in out.getvalue().splitlines()]
    assert names == ["client summarizer", "server summarizer", "internal summarizer", "server bridge"]
    assert err.getvalue() == f"agentmesh: warning: {log}:4: not valid JSON (skipped)\n"


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)


def test_tail_rejects_a_negative_count(tmp_path):
    log = _write(tmp_path / "audit.jsonl", RECORDS)
    with pytest.raises(ConfigError, match="--lines"):
        _run(["audit", "tail", "-n", "-1", str(log)])


def test_control_characters_from_callers_are_shown_escaped(tmp_path, capsys):
    before = {"rpc.system": "grpc", "rpc.grpc.status_code": 7, "agentmesh.agent": "ingestor",
              "agentmesh.decision": "deny"}  # a log of before: an unserved method's span named by its caller
    evil = _span(T2, "00000000000000f1", None, "server", "ingestor", 0, 1.0, before, name="/a\x1b[2J/B\u202e",
                 events=[{"name": "agentmesh.denied", "attributes": {"stage": "token", "reason": "a\nFAKE LINE"}}])
    log = _write(tmp_path / "audit.jsonl", [evil])
    assert _run(["audit", "show", str(log)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out
    assert out.splitlines()[1].endswith("denied[token]: a\\u000aFAKE LINE")
    assert "a\\u001b[2J/B\\u202e" in out
