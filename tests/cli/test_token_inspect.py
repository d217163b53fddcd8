"""``agentmesh token inspect|issue|revoke``: what a token says (never its signature), whether it verifies,
its jti on issue, tokens.client_ttl, and revoke refusing what is not a jti."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from meshkit import write_mesh

from agentmesh.cli.main import main
from agentmesh.identity import cert_thumbprint
from agentmesh.pki import CertificateAuthority
from agentmesh.tokens import RevocationStore, TokenAuthority
from agentmesh.tokens.crypto import b64url_decode

ISSUER = "spiffe://example.org"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse usage errors
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agentmesh: error: ") and fragment in lines[0], err


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    ca = CertificateAuthority.init(tmp_path / "ca", "example.org")
    TokenAuthority.init(ca.dir)
    return ca


def issue(ca: CertificateAuthority, *, clock: float | None = None, ttl: float = 900, **kw: object) -> str:
    auth = TokenAuthority.load(ca.dir, issuer=ISSUER, **({"clock": lambda: clock} if clock is not None else {}))
    return auth.issue(sub="alice@example.org", roles=["client", "reader"], audience="agentmesh", ttl=ttl,
                      **kw)  # type: ignore[arg-type]


def claims(token: str) -> dict[str, object]:
    out: dict[str, object] = json.loads(b64url_decode(token.split(".")[1]))
    return out


def test_inspect_shows_the_claims_and_never_the_signature(capsys: pytest.CaptureFixture[str],
                                                          ca: CertificateAuthority) -> None:
    token = issue(ca)
    jti = claims(token)["jti"]
    code, out, err = run(capsys, "token", "inspect", token)
    assert code == 0 and err == ""
    fields = dict(line.split(None, 1) if not line.startswith(("bound to:", "issued:")) else
                  (line[:line.index(":") + 1], line[line.index(":") + 1:].strip()) for line in out.splitlines())
    assert fields["subject:"] == "alice@example.org" and fields["roles:"] == "client, reader"
    assert fields["jti:"] == jti and fields["issuer:"] == ISSUER and fields["audience:"] == "agentmesh"
    assert fields["expires:"].endswith("(in 15m)") or fields["expires:"].endswith("(in 14m 59s)")
    assert fields["bound to:"] == "no certificate (a bearer token)"
    assert fields["signature:"].startswith("not checked") and fields["status:"] == "unverified"
    signature = token.split(".")[2]
    assert signature not in out and signature[:12] not in out


def test_inspect_verifies_against_the_ca_key(capsys: pytest.CaptureFixture[str], ca: CertificateAuthority,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    token = issue(ca)
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"Bearer {token}\n"))  # as copied from a header
    code, out, _ = run(capsys, "token", "inspect", "-", "--ca", str(ca.dir))
    assert code == 0
    assert f"signature:  valid: signed by the mesh token key in {ca.dir}" in out and out.endswith("status:     valid\n")

    h, p, s = token.split(".")
    code, out, _ = run(capsys, "token", "inspect", f"{h}.{p}.{s[:-6]}AAAAAA", "--ca", str(ca.dir))
    assert code == 0 and "signature:  INVALID: token signature invalid" in out and "status:     invalid" in out

    other = CertificateAuthority.init(ca.dir.parent / "other", "example.org")
    code, out, _ = run(capsys, "token", "inspect", token, "--ca", str(other.dir), "-o", "json")
    assert code == 2  # the other CA has no token key: one line, as every error
    one_error(_, "no token signing key")


def test_inspect_an_expired_or_revoked_token(capsys: pytest.CaptureFixture[str], ca: CertificateAuthority) -> None:
    expired = issue(ca, clock=time.time() - 7200, ttl=600)  # made two hours ago by an injected clock
    code, out, _ = run(capsys, "token", "inspect", expired, "--ca", str(ca.dir), "-o", "json")
    data = json.loads(out)
    assert code == 0 and data["status"] == "expired" and data["signature"]["valid"] is True
    assert -7200 < data["expires_in"] <= -6600
    code, out, _ = run(capsys, "token", "inspect", expired)
    assert "ago)" in out.split("expires:")[1].splitlines()[0] and "status:     expired" in out

    live = issue(ca)
    RevocationStore(ca.dir).revoke(str(claims(live)["jti"]), None)
    code, out, _ = run(capsys, "token", "inspect", live, "--ca", str(ca.dir), "-o", "yaml")
    assert yaml.safe_load(out)["status"] == "revoked"


def test_inspect_json_and_binding(capsys: pytest.CaptureFixture[str], ca: CertificateAuthority) -> None:
    leaf = ca.issue("ingestor")
    thumb = cert_thumbprint(leaf.cert)
    token = TokenAuthority.load(ca.dir, issuer=ISSUER).issue(
        sub="spiffe://example.org/agent/ingestor", roles=["ingestor"], audience="agentmesh", ttl=300,
        cnf_thumbprint=thumb, extra={"scope": "documents:read"})
    code, out, _ = run(capsys, "token", "inspect", token, "--ca", str(ca.dir), "-o", "json")
    data = json.loads(out)
    assert code == 0
    assert data["cnf_thumbprint"] == thumb and data["claims"]["cnf"] == {"x5t#S256": thumb}
    assert data["jti"] == data["claims"]["jti"] and data["header"]["typ"] == "at+jwt"
    assert data["expires_at"].endswith("Z") and data["signature"]["checked"] is True
    assert token.split(".")[2] not in out
    code, out, _ = run(capsys, "token", "inspect", token)
    assert re.search(rf"^bound to: +the certificate with x5t#S256 {re.escape(thumb)}$", out, re.M)
    assert re.search(r'^other claims: +\{"scope": "documents:read"\}$', out, re.M)


@pytest.mark.parametrize("bad", ["not-a-token", "a.b", "e30.e30.", "x" * 70000])
def test_inspect_refuses_what_is_not_a_token(capsys: pytest.CaptureFixture[str], bad: str) -> None:
    code, out, err = run(capsys, "token", "inspect", bad)
    assert code == 2 and out == ""
    one_error(err, "token")
    assert bad[:20] not in err or bad == "a.b"


# ----------------------------------------------------------------------------- issue


def test_issue_json_carries_the_jti(capsys: pytest.CaptureFixture[str], ca: CertificateAuthority) -> None:
    code, out, err = run(capsys, "token", "issue", "--ca", str(ca.dir), "--sub", "bob", "--role", "x", "-o", "json")
    data = json.loads(out)
    assert code == 0 and err == ""
    assert data["jti"] == claims(data["token"])["jti"] and data["sub"] == "bob" and data["roles"] == ["x"]
    code, out, err = run(capsys, "token", "issue", "--ca", str(ca.dir), "--sub", "bob", "--role", "x")
    assert out.count(".") == 2 and out.strip() == out[:-1] and err == ""  # a pipe gets the token only


def test_issue_tells_the_jti_at_a_terminal(ca: CertificateAuthority) -> None:
    leader, follower = os.openpty()
    try:
        r = subprocess.run([sys.executable, "-m", "agentmesh.cli.main", "token", "issue", "--ca", str(ca.dir),
                            "--sub", "carol", "--role", "client"], stdout=subprocess.PIPE, stderr=follower,
                           text=True, timeout=60)
        os.close(follower)
        follower = -1
        said = os.read(leader, 4096).decode()
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert r.returncode == 0
    jti = claims(r.stdout.strip())["jti"]
    assert said.startswith(f"agentmesh: token jti {jti} for carol, expires ")


def test_issue_honours_the_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write_mesh(tmp_path, {"alpha": {"roles": ["alpha"]}},
                      tokens={"client_ttl": "2m", "audience": "billing", "issuer": "https://mesh.example"})
    code, out, _ = run(capsys, "token", "issue", "--config", str(path), "--sub", "dave", "--role", "client")
    c = claims(out.strip())
    assert code == 0 and c["exp"] - c["iat"] == 120  # type: ignore[operator]
    assert (c["aud"], c["iss"]) == ("billing", "https://mesh.example")
    code, out, _ = run(capsys, "token", "issue", "--config", str(path), "--sub", "dave", "--role", "client",
                       "--ttl", "1h")
    c = claims(out.strip())
    assert c["exp"] - c["iat"] == 3600  # type: ignore[operator]
    code, out, _ = run(capsys, "token", "inspect", out.strip(), "--config", str(path))
    assert "signature:  valid" in out and "status:     valid" in out
    code, out, _ = run(capsys, "token", "jwks", "--config", str(path))
    assert code == 0 and json.loads(out)["keys"]
    code, _, err = run(capsys, "token", "issue", "--config", str(path), "--ca", str(tmp_path / "ca"), "--sub", "d",
                       "--role", "r")
    assert code == 2 and "not allowed with argument" in err


def test_issue_without_config_keeps_15_minutes(capsys: pytest.CaptureFixture[str], ca: CertificateAuthority) -> None:
    code, out, _ = run(capsys, "token", "issue", "--ca", str(ca.dir), "--sub", "erin", "--role", "client")
    c = claims(out.strip())
    assert code == 0 and c["exp"] - c["iat"] == 900  # type: ignore[operator]


def test_init_prints_the_kid_of_the_key_it_made(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", "example.org")
    code, out, _ = run(capsys, "token", "init", "--ca", str(ca.dir))
    kid = TokenAuthority.load(ca.dir, issuer=ISSUER).kid
    assert code == 0 and out.strip().endswith(f"(kid {kid})")


# ----------------------------------------------------------------------------- revoke


def test_revoke_validates_the_jti(capsys: pytest.CaptureFixture[str], ca: CertificateAuthority) -> None:
    d = str(ca.dir)
    for bad in ("hello world!!", "1234", "134B365BFF4D2A674E41532B7656DAF9", "x" * 500):
        code, out, err = run(capsys, "token", "revoke", "--ca", d, bad)
        assert code == 2 and out == ""
        one_error(err, "is not a mesh token id (32 hex digits")
    assert RevocationStore(ca.dir).load() == frozenset()
    jti = str(claims(issue(ca))["jti"])
    code, out, _ = run(capsys, "token", "revoke", "--ca", d, jti)
    assert code == 0 and out == f"revoked {jti}\n"
    code, out, _ = run(capsys, "token", "revoke", "--ca", d, "--external", "0b8e4c1e-5d1f-4c3a-9d7e-2f6a1b3c4d5e")
    assert code == 0
    code, _, err = run(capsys, "token", "revoke", "--ca", d, "--external", "has a space")
    assert code == 2 and "without spaces" in err
    assert RevocationStore(ca.dir).load() == {jti, "0b8e4c1e-5d1f-4c3a-9d7e-2f6a1b3c4d5e"}


def test_revoke_takes_the_jti_of_a_whole_token(capsys: pytest.CaptureFixture[str], ca: CertificateAuthority) -> None:
    token = issue(ca)
    jti = str(claims(token)["jti"])
    code, out, err = run(capsys, "token", "revoke", "--ca", str(ca.dir), token)
    assert code == 0 and err == ""
    assert out.startswith(f"revoked {jti} (subject alice@example.org, expires ")
    assert out.rstrip().endswith("; the jti of the token given)") and token not in out
    assert jti in RevocationStore(ca.dir).load()
    h, p, s = token.split(".")
    code, _, err = run(capsys, "token", "revoke", "--ca", str(ca.dir), f"{h}.{p}.{s[:-4]}AAAA")
    assert code == 2 and "cannot revoke: token signature invalid" in err and s[:8] not in err
