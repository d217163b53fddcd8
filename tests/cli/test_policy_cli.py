"""``agentmesh policy check|explain`` against the workflow example's own policy: a table of calls (allowed,
refused by a deny rule, default deny, delegated via and through a chain), exit 0/1, -o json, usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from agentmesh.cli.main import main

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = str(REPO / "examples" / "workflow" / "mesh.yaml")
CLIENT = ("--principal", "alice@example.org", "--roles", "client")

CASES = [
    # id, arguments, allowed, deciding rule
    ("client via bridge starts the workflow", ["--via", "bridge", *CLIENT, "--to", "ingestor", "--method", "Invoke"],
     True, "client-starts-workflow"),
    ("any Agent method: a glob", ["--via", "bridge", *CLIENT, "--to", "ingestor", "--method",
                                  "agentmesh.v1.Agent/Describe"], True, "client-starts-workflow"),
    ("the ingestor passes it on", ["--chain", "bridge,ingestor", *CLIENT, "--to", "summarizer", "--method", "Invoke"],
     True, "ingestor-to-summarizer"),
    ("the summarizer has it checked", ["--chain", "bridge,ingestor,summarizer", *CLIENT, "--to", "validator",
                                       "--method", "/agentmesh.v1.Agent/Invoke"], True, "summarizer-to-validator"),
    ("deny rule: the validator from outside", ["--via", "bridge", *CLIENT, "--to", "validator", "--method", "Invoke"],
     False, "no-outside-validator"),
    ("deny before allow, whatever the role", ["--via", "bridge", "--principal", "root", "--roles", "client,admin",
                                              "--to", "validator", "--method", "Invoke"],
     False, "no-outside-validator"),
    ("default deny: a direct call", ["--from", "ingestor", "--to", "summarizer", "--method", "Invoke"], False, None),
    ("default deny: the wrong role", ["--via", "bridge", "--principal", "eve", "--roles", "viewer", "--to", "ingestor",
                                      "--method", "Invoke"], False, None),
    ("default deny: a method outside the glob", ["--chain", "bridge,ingestor", *CLIENT, "--to", "summarizer",
                                                 "--method", "Describe"], False, None),
    ("default deny: delegated by the wrong hop", ["--via", "summarizer", *CLIENT, "--to", "ingestor", "--method",
                                                  "Invoke"], False, None),
]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("args", "allowed", "rule"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check(capsys: pytest.CaptureFixture[str], args: list[str], allowed: bool, rule: str | None) -> None:
    code, out, err = run(capsys, "policy", "check", "--config", WORKFLOW, *args)
    assert (code, err) == (0 if allowed else 1, "")
    word = "allow" if allowed else "deny"
    assert out.startswith(f"{word}: {f'rule {rule}' if rule else 'no rule allows'}") and out.count("\n") == 1
    code, out, _ = run(capsys, "policy", "check", "--config", WORKFLOW, *args, "-o", "json")
    data = json.loads(out)
    assert (data["allowed"], data["decision"], data["rule"]) == (allowed, word, rule)
    assert data["request"]["method"].startswith("/agentmesh.v1.Agent/")


@pytest.mark.parametrize(("args", "allowed", "rule"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_explain(capsys: pytest.CaptureFixture[str], args: list[str], allowed: bool, rule: str | None) -> None:
    code, out, _ = run(capsys, "policy", "explain", "--config", WORKFLOW, *args, "-o", "yaml")
    data = yaml.safe_load(out)
    assert code == (0 if allowed else 1) and data["rule"] == rule
    names = [r["name"] for r in data["rules"]]
    assert names[0] == "no-outside-validator" and len(names) == 4  # the deny rule first, then the allows in order
    assert [r["name"] for r in data["rules"] if r["decides"]] == ([rule] if rule else [])
    assert all(r["why"] for r in data["rules"])

    code, out, _ = run(capsys, "policy", "explain", "--config", WORKFLOW, *args)
    lines = out.splitlines()
    assert lines[1] == "order: deny rules, then allow rules in config order; no match: deny"
    assert lines[3].split() == ["#", "ACTION", "RULE", "RESULT", "WHY"]
    assert lines[-1].startswith(f"decision: {'allow' if allowed else 'deny'}: ")
    if rule:
        assert any(line.split()[2:4] == [rule, "DECIDES"] for line in lines[4:8])


def test_explain_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "policy", "explain", "--config", WORKFLOW, "--via", "bridge", *CLIENT, "--to",
                       "validator", "--method", "Invoke")
    assert code == 1
    assert out.splitlines()[0] == ("call: alice@example.org (roles [client]) -> validator /agentmesh.v1.Agent/Invoke, "
                                   "delegated, chain [bridge]")
    rows = {line.split()[2]: line for line in out.splitlines()[4:8]}
    assert rows["no-outside-validator"].split()[3] == "DECIDES"
    assert rows["client-starts-workflow"].endswith("no match  to [ingestor]: the call is to validator")
    assert rows["summarizer-to-validator"].endswith("via [summarizer]: the call was delegated through bridge")


def test_direct_calls_take_the_peers_configured_roles(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = yaml.safe_load(Path(WORKFLOW).read_text())
    doc["policy"].append({"name": "ingestor-describes", "action": "allow", "to": ["summarizer"],
                          "methods": ["/agentmesh.v1.Agent/Describe"], "roles": ["ingestor"]})
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, out, _ = run(capsys, "policy", "check", "--config", str(path), "--from", "ingestor", "--to", "summarizer",
                       "--method", "Describe", "-o", "json")
    data = json.loads(out)
    assert code == 0 and data["rule"] == "ingestor-describes"
    assert data["request"]["roles"] == ["ingestor"]  # agents.ingestor.roles, as in its token
    assert data["request"]["principal"] == "spiffe://example.org/agent/ingestor"
    code, _, _ = run(capsys, "policy", "check", "--config", str(path), "--from", "validator", "--to", "summarizer",
                     "--method", "Describe")
    assert code == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--to", "ingestor", "--method", "Invoke"], "say who calls: --from PEER"),
    (["--via", "bridge", "--to", "ingestor", "--method", "Invoke"], "--principal: required for a delegated call"),
    (["--via", "bridge", "--chain", "bridge,ingestor", *CLIENT, "--to", "summarizer", "--method", "Invoke"],
     "--via names the last hop"),
    (["--from", "ingestor", "--via", "bridge", *CLIENT, "--to", "summarizer", "--method", "Invoke"],
     "--from: in a delegated call the peer is the last hop"),
    (["--from", "ingestor", "--to", "nowhere", "--method", "Invoke"], "unknown agent 'nowhere'"),
    (["--from", "ingestor", "--to", "summarizer", "--method", "Summarize"], "unknown method 'Summarize' of summarizer"),
    (["--from", "Bad Name", "--to", "summarizer", "--method", "Invoke"], "--from: "),
])
def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    code, out, err = run(capsys, "policy", "check", "--config", WORKFLOW, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("agentmesh: error: ") and message in err, err
