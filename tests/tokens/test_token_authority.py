"""The token authority: key beside the CA, kid = RFC 7638 thumbprint, JWKS, claims of issued tokens."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from conftest import AUDIENCE, ISSUER

from agentmesh.clock import FakeClock
from agentmesh.errors import ConfigError, PKIError
from agentmesh.tokens import KEY_FILE, TokenAuthority, default_issuer
from agentmesh.tokens.crypto import jwk_thumbprint


def _decode(segment: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return data


def test_init_writes_a_private_p256_key(ca_dir: Path) -> None:
    path = TokenAuthority.init(ca_dir)
    assert path == ca_dir / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(PKIError, match="already exists"):
        TokenAuthority.init(ca_dir)
    before = path.read_bytes()
    TokenAuthority.init(ca_dir, force=True)
    assert path.read_bytes() != before


def test_init_refuses_unknown_algorithm_and_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ES256, EdDSA"):
        TokenAuthority.init(tmp_path, algorithm="HS256")
    with pytest.raises(PKIError, match="no CA directory"):
        TokenAuthority.init(tmp_path / "nope")


def test_load_without_key_is_one_clear_line(ca_dir: Path) -> None:
    with pytest.raises(PKIError) as err:
        TokenAuthority.load(ca_dir, issuer=ISSUER)
    assert "no token signing key" in err.value.message and "\n" not in err.value.message


def test_load_damaged_key(ca_dir: Path) -> None:
    (ca_dir / KEY_FILE).write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(PKIError, match="damaged"):
        TokenAuthority.load(ca_dir, issuer=ISSUER)
    (ca_dir / KEY_FILE).write_bytes((ca_dir / "ca-key.pem").read_bytes())  # P-256: acceptable
    assert TokenAuthority.load(ca_dir, issuer=ISSUER).algorithm == "ES256"


def test_kid_is_the_rfc7638_thumbprint(authority: TokenAuthority) -> None:
    (jwk,) = authority.jwks()["keys"]
    assert jwk["kid"] == authority.kid == jwk_thumbprint(jwk)
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    assert "d" not in jwk


def test_rfc7638_example_vector() -> None:
    jwk = {"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29", "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
        "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZ"
        "Hzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-k"
        "EgU8awapJzKnqDKgw")}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_issued_claims_and_header(authority: TokenAuthority, clock: FakeClock) -> None:
    token = authority.issue(sub="alice", roles=["client"], audience=AUDIENCE, ttl=90,
                            cnf_thumbprint="abc", extra={"tenant": "t1"})
    h, p, _ = token.split(".")
    header, claims = _decode(h), _decode(p)
    assert header == {"alg": "ES256", "kid": authority.kid, "typ": "at+jwt"}
    now = int(clock())
    assert claims["iss"] == ISSUER and claims["sub"] == "alice" and claims["aud"] == AUDIENCE
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (now, now, now + 90)
    assert claims["roles"] == ["client"] and claims["cnf"] == {"x5t#S256": "abc"} and claims["tenant"] == "t1"
    assert len(base64.urlsafe_b64decode(claims["jti"] + "==")) >= 16
    other = authority.issue(sub="alice", roles=["client"], audience=AUDIENCE, ttl=90)
    assert _decode(other.split(".")[1])["jti"] != claims["jti"]
    assert "cnf" not in _decode(other.split(".")[1])


@pytest.mark.parametrize("kw,msg", [
    ({"sub": ""}, "subject"),
    ({"roles": "admin"}, "roles"),
    ({"roles": ["ok", 1]}, "roles"),
    ({"audience": ""}, "audience"),
    ({"ttl": 0}, "lifetime"),
    ({"extra": {"sub": "root"}}, "may not set sub"),
    ({"cnf_thumbprint": ""}, "thumbprint"),
    ({"sub": "spiffe://example.org/agent/a"}, "must be bound"),
])
def test_issue_refuses_bad_input(authority: TokenAuthority, kw: dict[str, Any], msg: str) -> None:
    args: dict[str, Any] = {"sub": "alice", "roles": ["client"], "audience": AUDIENCE, "ttl": 60, **kw}
    with pytest.raises(ConfigError, match=msg):
        authority.issue(**args)


def test_default_issuer(ca_dir: Path, tmp_path: Path) -> None:
    assert default_issuer(ca_dir) == ISSUER
    with pytest.raises(PKIError, match="no CA"):
        default_issuer(tmp_path / "nowhere")


def test_ensure_creates_key_once(ca_dir: Path) -> None:
    a = TokenAuthority.ensure(ca_dir, issuer=ISSUER)
    b = TokenAuthority.ensure(ca_dir, issuer=ISSUER)
    assert a.kid == b.kid
