"""``agentmesh ca rotate|rollover`` and ``agentmesh cert join-token|list`` run in-process through main():
what the operator sees, and one ``agentmesh: error:`` line (no traceback) for every bad input."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from cryptography import x509

from agentmesh.cli.main import main
from agentmesh.pki import CertificateAuthority
from agentmesh.pki.join import JoinTokens

YEAR = 365 * 86400
TOKEN = re.compile(r"^amjoin1\.[0-9a-f]{16}\.[A-Za-z0-9_-]{43}$")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse usage errors
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def ok(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, str]:
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    return out, err


def fails(capsys: pytest.CaptureFixture[str], *argv: str, match: str) -> None:
    rc, _, err = run(capsys, *argv)
    assert rc != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agentmesh: error:"), err
    assert match in lines[0], lines[0]


def ca_aged(tmp_path: Path, age: float) -> Path:
    """A CA made ``age`` seconds ago (the CLI runs on the real clock)."""
    made = time.time() - age
    return CertificateAuthority.init(tmp_path / "ca", "example.org", clock=lambda: made).dir


def test_rotate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = str(tmp_path / "ca")
    ok(capsys, "ca", "init", "--dir", ca, "--trust-domain", "example.org")
    old = CertificateAuthority.load(ca).cert
    out, _ = ok(capsys, "ca", "rotate", "--ca", ca)
    new = CertificateAuthority.load(ca).cert
    assert f"old: serial {old.serial_number:x}, expires {old.not_valid_after_utc:%Y-%m-%d}" in out
    assert f"new: serial {new.serial_number:x}, expires {new.not_valid_after_utc:%Y-%m-%d}" in out
    assert (tmp_path / "ca" / "issuers" / f"{old.serial_number:x}.pem").exists()
    fails(capsys, "ca", "rotate", "--ca", str(tmp_path / "nope"), match="no CA in")
    fails(capsys, "ca", "rotate", match="--ca")


def test_rollover_then_finish(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = str(tmp_path / "ca")
    ok(capsys, "ca", "init", "--dir", ca, "--trust-domain", "example.org")
    old_root = CertificateAuthority.load(ca).root
    out, _ = ok(capsys, "ca", "rollover", "--ca", ca)
    assert f"old root: serial {old_root.serial_number:x}" in out
    assert f"agentmesh ca rollover --ca {ca} --finish" in out and "streams the new bundle" in out
    assert len(x509.load_pem_x509_certificates((tmp_path / "ca" / "bundle.pem").read_bytes())) == 2
    fails(capsys, "ca", "rollover", "--ca", ca, match="already under way")
    fails(capsys, "ca", "rollover", "--ca", ca, "--finish", match="does not issue yet")
    out, _ = ok(capsys, "ca", "rollover", "--ca", ca, "--activate")
    assert "the new root now issues" in out
    out, _ = ok(capsys, "ca", "rollover", "--ca", ca, "--finish")
    assert f"dropped the old root (serial {old_root.serial_number:x}" in out
    assert (tmp_path / "ca" / "bundle.pem").read_bytes() == (tmp_path / "ca" / "root.pem").read_bytes()
    out, _ = ok(capsys, "ca", "rollover", "--ca", ca, "--finish")
    assert "no root rollover under way" in out


def test_join_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = str(tmp_path / "ca")
    ok(capsys, "ca", "init", "--dir", ca, "--trust-domain", "example.org")
    out, err = ok(capsys, "cert", "join-token", "alpha", "--ca", ca, "--ttl", "1h", "--dns", "alpha.mesh.svc")
    [token] = out.splitlines()
    assert TOKEN.match(token)
    [hint] = err.splitlines()
    assert "expires" in hint and "agentmesh agent alpha --config mesh.yaml --join - (the token on stdin)" in hint
    assert token not in err and token.split(".")[2] not in (tmp_path / "ca" / "join-tokens.jsonl").read_text()
    grant = JoinTokens(tmp_path / "ca").redeem(token)
    assert grant.name == "alpha" and grant.dns == ("alpha.mesh.svc",)
    assert 3590 < grant.expires_at - time.time() <= 3600
    CertificateAuthority.load(ca).block("alpha", reason="stolen laptop", by="ops")
    fails(capsys, "cert", "join-token", "alpha", "--ca", ca, match="agent alpha is revoked (stolen laptop)")
    fails(capsys, "cert", "join-token", "Alpha", "--ca", ca, match="invalid agent name")
    fails(capsys, "cert", "join-token", "beta", "--ca", ca, "--ttl", "soon", match="--ttl")
    fails(capsys, "cert", "join-token", "beta", "--ca", ca, "--ttl", "0", match="lifetime must be positive")
    fails(capsys, "cert", "join-token", "beta", "--ca", ca, "--dns", "*.mesh", match="invalid DNS name")
    fails(capsys, "cert", "join-token", "beta", "--ca", str(tmp_path / "nope"), match="no CA in")


def test_list_shows_reasons_and_blocked_members(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = str(tmp_path / "ca")
    ok(capsys, "ca", "init", "--dir", ca, "--trust-domain", "example.org")
    for name in ("alpha", "beta"):
        ok(capsys, "cert", "issue", name, "--ca", ca, "--out", str(tmp_path / name))
    ok(capsys, "cert", "revoke", "alpha", "--ca", ca, "--reason", "key leaked")
    CertificateAuthority.load(ca).block("alpha", reason="key leaked", by="ops")
    out, _ = ok(capsys, "cert", "list", "--ca", ca)
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "SERIAL", "SPIFFE", "ID", "NOT", "AFTER", "STATUS", "REASON"]
    assert lines[1].startswith("alpha") and lines[1].endswith("revoked  key leaked")
    assert lines[2].startswith("beta") and lines[2].endswith("valid")
    assert lines[3] == ""
    assert re.fullmatch(r"alpha  blocked  key leaked  by ops  \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", lines[4])
    fails(capsys, "cert", "issue", "alpha", "--ca", ca, "--out", str(tmp_path / "alpha"),
          match="agent alpha is revoked (key leaked); reinstate it with: agentmesh reinstate alpha")
    fails(capsys, "cert", "renew", "alpha", "--ca", ca, "--out", str(tmp_path / "alpha"), match="is revoked")
    fails(capsys, "cert", "revoke", "beta", "--ca", ca, "--reason", "two\nlines", match="one line")


def test_capped_leaf_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = str(ca_aged(tmp_path, YEAR - 3600))  # the intermediate has an hour left
    out, err = ok(capsys, "cert", "issue", "alpha", "--ca", ca, "--out", str(tmp_path / "alpha"), "--ttl", "24h")
    assert "spiffe://example.org/agent/alpha" in out
    [warning] = err.splitlines()
    assert warning.startswith("agentmesh: warning: the certificate of alpha ends with the issuing CA")
    assert f"agentmesh ca rotate --ca {ca}" in warning
    _, err = ok(capsys, "cert", "renew", "alpha", "--ca", ca, "--out", str(tmp_path / "alpha"), "--ttl", "24h")
    assert "warning" in err
    _, err = ok(capsys, "cert", "issue", "beta", "--ca", ca, "--out", str(tmp_path / "beta"), "--ttl", "10m")
    assert err == ""


def test_expired_intermediate_then_rotate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = str(ca_aged(tmp_path, YEAR + 600))
    fails(capsys, "cert", "issue", "alpha", "--ca", ca, "--out", str(tmp_path / "alpha"),
          match="the issuing CA expired on ")
    fails(capsys, "cert", "issue", "alpha", "--ca", ca, "--out", str(tmp_path / "alpha"),
          match=f"rotate it with: agentmesh ca rotate --ca {ca}")
    ok(capsys, "ca", "rotate", "--ca", ca)
    _, err = ok(capsys, "cert", "issue", "alpha", "--ca", ca, "--out", str(tmp_path / "alpha"))
    assert err == ""
