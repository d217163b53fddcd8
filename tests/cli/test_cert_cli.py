"""The CA and cert commands as an operator runs them: one clear line and a non-zero exit on errors."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

AGENTMESH = [sys.executable, "-m", "agentmesh.cli.main"]
REPO = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENTMESH, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def ok(*args: str) -> str:
    r = run(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def fails(*args: str, match: str) -> None:
    r = run(*args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agentmesh: error:"), r.stderr
    assert match in lines[0]


def test_onboarding_flow(tmp_path: Path) -> None:
    ca = str(tmp_path / "ca")
    ok("ca", "init", "--dir", ca, "--trust-domain", "example.org")
    out = ok("cert", "issue", "alpha", "--ca", ca, "--out", str(tmp_path / "alpha"),
             "--ttl", "2h", "--dns", "alpha.local")
    assert "spiffe://example.org/agent/alpha" in out
    assert stat.S_IMODE((tmp_path / "alpha" / "key.pem").stat().st_mode) == 0o600
    ok("cert", "renew", "alpha", "--ca", ca, "--out", str(tmp_path / "alpha"))
    ok("cert", "revoke", "alpha", "--ca", ca)
    table = ok("cert", "list", "--ca", ca).splitlines()
    assert table[0].split() == ["NAME", "SERIAL", "SPIFFE", "ID", "NOT", "AFTER", "STATUS"]
    assert [row.split()[-1] for row in table[1:]] == ["revoked", "revoked"]


@pytest.mark.slow  # ~11 s of CLI subprocesses: CI runs it (make test stays under 5 min)
def test_errors_are_one_line(tmp_path: Path) -> None:
    ca = str(tmp_path / "ca")
    fails("cert", "issue", "a", "--ca", ca, "--out", str(tmp_path / "a"), match="no CA in")
    fails("ca", "init", "--dir", ca, "--trust-domain", "Not A Domain", match="invalid trust domain")
    ok("ca", "init", "--dir", ca, "--trust-domain", "example.org")
    fails("ca", "init", "--dir", ca, "--trust-domain", "example.org", match="already exists")
    fails("cert", "issue", "Bad_Name", "--ca", ca, "--out", str(tmp_path / "x"), match="invalid agent name")
    fails("cert", "issue", "a", "--ca", ca, "--out", str(tmp_path / "x"), "--ttl", "forever", match="--ttl")
    fails("cert", "revoke", "nobody", "--ca", ca, match="no unrevoked certificate")
    fails("cert", "bogus", match="invalid choice")


def test_key_that_cannot_be_read(tmp_path: Path) -> None:
    ca = str(tmp_path / "ca")
    ok("ca", "init", "--dir", ca, "--trust-domain", "example.org")
    key = tmp_path / "ca" / "ca-key.pem"
    key.unlink()
    key.mkdir()  # unreadable as a file, whoever runs the test (root reads any file)
    fails("cert", "issue", "a", "--ca", ca, "--out", str(tmp_path / "a"), match="unreadable or damaged")


def test_unreadable_key_is_a_clear_error(tmp_path: Path) -> None:
    ca = str(tmp_path / "ca")
    ok("ca", "init", "--dir", ca, "--trust-domain", "example.org")
    (tmp_path / "ca" / "ca-key.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    fails("cert", "issue", "a", "--ca", ca, "--out", str(tmp_path / "a"), match="unreadable or damaged")


def test_operator_scripts(tmp_path: Path) -> None:
    env = {"AGENTMESH": " ".join(AGENTMESH), "AGENTMESH_CA_DIR": str(tmp_path / "ca"),
           "AGENTMESH_OUT_DIR": str(tmp_path / "ids"), "AGENTMESH_TRUST_DOMAIN": "corp.example"}
    for cmd in (["init-ca.sh"], ["onboard-agent.sh", "writer"]):
        r = subprocess.run([str(REPO / "certs" / "scripts" / cmd[0]), *cmd[1:]], capture_output=True, text=True,
                           env={**os.environ, **env}, timeout=60)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "ids" / "writer" / "cert.pem").exists()
    r = subprocess.run([str(REPO / "certs" / "scripts" / "onboard-agent.sh")], capture_output=True, text=True,
                       env={**os.environ, **env}, timeout=60)
    assert r.returncode != 0 and "usage" in r.stderr
