"""``agentmesh token ...`` through the real CLI entry point (in-process, and once as a subprocess)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import AUDIENCE, ISSUER

from agentmesh.cli.main import main
from agentmesh.pki.ca import CertificateAuthority
from agentmesh.tokens import KeySet, RevocationStore, RevokedSet, TokenVerifier
from agentmesh.tokens.crypto import b64url_decode

AGENTMESH = Path(sys.executable).parent / "agentmesh"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _verifier(capsys: pytest.CaptureFixture[str], ca_dir: Path, **kw: object) -> TokenVerifier:
    code, out, _ = run(capsys, "token", "jwks", "--ca", str(ca_dir))
    assert code == 0
    return TokenVerifier(KeySet.from_jwks(json.loads(out), ISSUER), audience=AUDIENCE, issuers={ISSUER},
                         **kw)  # type: ignore[arg-type]


def test_init_and_force(capsys: pytest.CaptureFixture[str], ca_dir: Path) -> None:
    code, out, _ = run(capsys, "token", "init", "--ca", str(ca_dir))
    assert code == 0 and "token-key.pem" in out
    code, _, err = run(capsys, "token", "init", "--ca", str(ca_dir))
    assert code == 2 and err.startswith("agentmesh: error: a token signing key already exists")
    code, _, _ = run(capsys, "token", "init", "--ca", str(ca_dir), "--force", "--alg", "EdDSA")
    assert code == 0
    _, out, _ = run(capsys, "token", "jwks", "--ca", str(ca_dir))
    (jwk,) = json.loads(out)["keys"]
    assert (jwk["alg"], jwk["crv"], jwk["use"]) == ("EdDSA", "Ed25519", "sig")


def test_issue_creates_the_key_and_prints_only_the_token(capsys: pytest.CaptureFixture[str],
                                                         ca_dir: Path) -> None:
    code, out, err = run(capsys, "token", "issue", "--ca", str(ca_dir), "--sub", "alice",
                         "--role", "client", "--role", "reader", "--ttl", "15m")
    assert code == 0 and err == ""
    token = out.strip()
    assert out == token + "\n" and token.count(".") == 2
    vt = _verifier(capsys, ca_dir).verify_unbound(token)
    assert (vt.sub, vt.roles, vt.iss, vt.aud) == ("alice", ("client", "reader"), ISSUER, (AUDIENCE,))
    assert vt.exp - (vt.iat or 0) == 900


def test_issue_options_and_errors(capsys: pytest.CaptureFixture[str], ca: CertificateAuthority,
                                  tmp_path: Path) -> None:
    d = str(ca.dir)
    code, out, _ = run(capsys, "token", "issue", "--ca", d, "--sub", "bob", "--role", "x",
                       "--aud", "billing", "--issuer", "https://mesh.example")
    claims = json.loads(b64url_decode(out.strip().split(".")[1]))
    assert (claims["aud"], claims["iss"]) == ("billing", "https://mesh.example")
    code, _, err = run(capsys, "token", "issue", "--ca", d, "--sub", "bob", "--role", "x", "--ttl", "soon")
    assert code == 2 and "--ttl" in err
    sid = "spiffe://example.org/agent/agent-a"
    code, _, err = run(capsys, "token", "issue", "--ca", d, "--sub", sid, "--role", "x")
    assert code == 2 and "--cert" in err
    issued = ca.issue("agent-a")
    cert = tmp_path / "a.pem"
    cert.write_bytes(issued.cert_pem)
    code, out, _ = run(capsys, "token", "issue", "--ca", d, "--sub", sid, "--role", "x", "--cert", str(cert))
    assert code == 0
    from agentmesh.identity import cert_thumbprint
    vt = _verifier(capsys, ca.dir).verify(out.strip(), peer_thumbprint=cert_thumbprint(issued.cert),
                                          peer_spiffe_id=sid)
    assert vt.bound_thumbprint == cert_thumbprint(issued.cert)


def test_jwks_without_key(capsys: pytest.CaptureFixture[str], ca_dir: Path) -> None:
    code, _, err = run(capsys, "token", "jwks", "--ca", str(ca_dir))
    assert code == 2 and "no token signing key" in err and err.count("\n") == 1


def test_revoke_by_jti_and_by_token(capsys: pytest.CaptureFixture[str], ca_dir: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    d = str(ca_dir)
    tokens = [run(capsys, "token", "issue", "--ca", d, "--sub", f"u{i}", "--role", "r")[1].strip()
              for i in range(3)]
    verifier = _verifier(capsys, ca_dir)
    jtis = [verifier.verify(t).jti for t in tokens]

    assert run(capsys, "token", "revoke", "--ca", d, jtis[0])[0] == 0
    assert run(capsys, "token", "revoke", "--ca", d, "--token", tokens[1])[0] == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO(tokens[2] + "\n"))
    code, out, _ = run(capsys, "token", "revoke", "--ca", d, "--token", "-")
    assert code == 0 and jtis[2] in out and tokens[2] not in out

    revoked = RevokedSet(RevocationStore(ca_dir).load())
    assert all(revoked(j) for j in jtis)
    v = _verifier(capsys, ca_dir, revoked=revoked)
    for t in tokens:
        with pytest.raises(Exception, match="revoked"):
            v.verify(t)


def test_revoke_refuses_forged_tokens_and_bad_usage(capsys: pytest.CaptureFixture[str], ca_dir: Path) -> None:
    d = str(ca_dir)
    token = run(capsys, "token", "issue", "--ca", d, "--sub", "u", "--role", "r")[1].strip()
    h, p, s = token.split(".")
    forged = f"{h}.{p}.{s[:-4]}AAAA"
    code, _, err = run(capsys, "token", "revoke", "--ca", d, "--token", forged)
    assert code == 2 and "cannot revoke: token signature invalid" in err and s[:8] not in err
    assert run(capsys, "token", "revoke", "--ca", d)[0] == 2
    assert run(capsys, "token", "revoke", "--ca", d, "x", "--token", token)[0] == 2
    assert RevocationStore(ca_dir).load() == frozenset()


@pytest.mark.skipif(not AGENTMESH.exists(), reason="agentmesh console script not installed")
def test_console_script(ca_dir: Path) -> None:
    proc = subprocess.run([str(AGENTMESH), "token", "issue", "--ca", str(ca_dir), "--sub", "alice",
                           "--role", "client"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().count(".") == 2
    proc = subprocess.run([str(AGENTMESH), "token", "revoke", "--ca", str(ca_dir), "--token", "nonsense"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("agentmesh: error: cannot revoke")
