"""Happy paths: ES256, EdDSA, HMAC, external issuers by JWKS file, per-issuer rules, the cache."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import AUDIENCE, ISSUER, Agent, Forge
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentmesh.clock import FakeClock
from agentmesh.config import ExternalIssuer, TokensConfig
from agentmesh.errors import ConfigError, TokenError
from agentmesh.tokens import (
    HMAC_KID,
    KeySet,
    TokenAuthority,
    TokenVerifier,
    crypto,
    keys_from_config,
    verifier_from_config,
)


def test_es256_bound_agent_token(authority: TokenAuthority, verifier: TokenVerifier, agent_a: Agent) -> None:
    token = authority.issue(sub=agent_a.spiffe_id, roles=["ingestor", "reader"], audience=AUDIENCE, ttl=300,
                            cnf_thumbprint=agent_a.thumbprint)
    vt = verifier.verify(token, peer_thumbprint=agent_a.thumbprint, peer_spiffe_id=agent_a.spiffe_id)
    assert (vt.sub, vt.roles, vt.iss, vt.aud) == (agent_a.spiffe_id, ("ingestor", "reader"), ISSUER, (AUDIENCE,))
    assert vt.bound_thumbprint == agent_a.thumbprint
    assert vt.claims["cnf"] == {"x5t#S256": agent_a.thumbprint}
    assert vt.iat is not None and vt.exp - vt.iat == 300


def test_unbound_client_token_verifies_without_peer(authority: TokenAuthority, verifier: TokenVerifier) -> None:
    token = authority.issue(sub="alice@example.com", roles=[], audience=AUDIENCE, ttl=60)
    vt = verifier.verify_unbound(token)
    assert vt.sub == "alice@example.com" and vt.roles == () and vt.bound_thumbprint is None


def test_absent_roles_are_empty(forge: Forge, claims: dict[str, Any], verifier: TokenVerifier) -> None:
    del claims["roles"]
    assert verifier.verify(forge(payload=claims)).roles == ()


def test_audience_list_and_typ_variants(forge: Forge, authority: TokenAuthority, claims: dict[str, Any],
                                        verifier: TokenVerifier) -> None:
    claims["aud"] = ["other", AUDIENCE]
    for typ in ("at+jwt", "JWT", "application/at+jwt"):
        header = {"alg": "ES256", "kid": authority.kid, "typ": typ}
        assert verifier.verify(forge(header, claims)).aud == ("other", AUDIENCE)
    assert verifier.verify(forge({"alg": "ES256", "kid": authority.kid}, claims)).sub == "alice"


def test_leeway_applies_to_nbf_and_iat(forge: Forge, claims: dict[str, Any], verifier: TokenVerifier,
                                       clock: FakeClock) -> None:
    now = int(clock())
    claims.update(nbf=now + 29, iat=now + 29)
    assert verifier.verify(forge(payload=claims)).sub == "alice"


def test_eddsa_authority(tmp_path: Path, clock: FakeClock) -> None:
    TokenAuthority.init(tmp_path, algorithm="EdDSA")
    auth = TokenAuthority.load(tmp_path, issuer=ISSUER, clock=clock)
    assert auth.algorithm == "EdDSA"
    assert auth.jwks()["keys"][0]["crv"] == "Ed25519"
    v = TokenVerifier(KeySet.from_authority(auth), audience=AUDIENCE, issuers={ISSUER}, clock=clock)
    token = auth.issue(sub="bob", roles=["client"], audience=AUDIENCE, ttl=60)
    assert v.verify(token).roles == ("client",)
    only_es = TokenVerifier(KeySet.from_authority(auth), audience=AUDIENCE, issuers={ISSUER},
                            algorithms=("ES256",), clock=clock)
    with pytest.raises(TokenError, match="algorithm not allowed"):
        only_es.verify(token)


def test_hmac_when_configured(forge: Forge, claims: dict[str, Any], authority: TokenAuthority,
                              make_verifier: Callable[..., TokenVerifier]) -> None:
    secret = b"0123456789abcdef0123456789abcdef"
    keys = KeySet.from_authority(authority) | KeySet.with_hmac(secret, "shared", ISSUER)
    v = make_verifier(keys)
    assert "HS256" in v.algorithms
    header = {"alg": "HS256", "kid": "shared", "typ": "JWT"}
    assert v.verify(forge(header, claims, sign=lambda d: crypto.sign("HS256", secret, d))).sub == "alice"
    other = forge(header, claims, sign=lambda d: crypto.sign("HS256", b"x" * 32, d))
    with pytest.raises(TokenError, match="signature invalid"):
        v.verify(other)
    assert "HS256" not in make_verifier(algorithms=("ES256", "HS256")).algorithms  # no secret, no HMAC


def test_hmac_secret_must_be_long(authority: TokenAuthority) -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        KeySet.with_hmac(b"short", "k", ISSUER)


def _external(tmp_path: Path) -> tuple[ed25519.Ed25519PrivateKey, Path]:
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "idp-jwks.json"
    path.write_text(json.dumps({"keys": [
        {**crypto.public_jwk(key), "kid": "idp-1", "use": "sig", "alg": "EdDSA"},
        {"kty": "RSA", "use": "enc", "kid": "enc-only", "n": "x", "e": "AQAB"},  # skipped: not for signing
    ]}))
    return key, path


def test_external_issuer_via_jwks_file(tmp_path: Path, forge: Forge, claims: dict[str, Any],
                                       authority: TokenAuthority,
                                       make_verifier: Callable[..., TokenVerifier]) -> None:
    key, path = _external(tmp_path)
    idp = "https://idp.example.com"
    v = make_verifier(KeySet.from_authority(authority) | KeySet.from_file(path, idp), issuers={ISSUER, idp})
    claims.update(iss=idp, sub="carol")
    vt = v.verify_unbound(forge({"alg": "EdDSA", "kid": "idp-1"}, claims, sign=key.sign))
    assert (vt.iss, vt.sub) == (idp, "carol")


def test_from_config_per_issuer_audience_and_roles_claim(tmp_path: Path, forge: Forge, claims: dict[str, Any],
                                                         authority: TokenAuthority, clock: FakeClock) -> None:
    key, path = _external(tmp_path)
    secret_file = tmp_path / "hmac.secret"
    secret_file.write_bytes(b"k" * 40 + b"\n")
    idp = "https://idp.example.com"
    cfg = TokensConfig(issuer=ISSUER, hmac_secret_file=secret_file, issuers=(
        ExternalIssuer(issuer=idp, jwks_file=path, audience="api://mesh", roles_claim="groups"),))
    keys, caches = keys_from_config(cfg, authority, clock=clock)
    assert caches == ()
    v = verifier_from_config(cfg, keys, clock=clock)
    ext = {**claims, "iss": idp, "aud": "api://mesh", "groups": ["admins"]}
    del ext["roles"]
    assert v.verify(forge({"alg": "EdDSA", "kid": "idp-1"}, ext, sign=key.sign)).roles == ("admins",)
    ext["aud"] = AUDIENCE  # the mesh audience is not this issuer's
    with pytest.raises(TokenError, match="audience"):
        v.verify(forge({"alg": "EdDSA", "kid": "idp-1"}, ext, sign=key.sign))
    hs = forge({"alg": "HS256", "kid": HMAC_KID}, claims, sign=lambda d: crypto.sign("HS256", b"k" * 40, d))
    assert v.verify(hs).roles == ("client",)


def test_bad_jwks_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    for content, msg in (("[]", "not a JSON object"), ("{", "not valid JSON"), ('{"keys": []}', "no usable"),
                         ('{"keys": [{"kty": "EC", "kid": "x", "crv": "P-256", "x": "a", "y": "b"}]}', "invalid EC")):
        bad.write_text(content)
        with pytest.raises(ConfigError, match=msg):
            KeySet.from_file(bad, "https://idp")
    with pytest.raises(ConfigError, match="cannot read"):
        KeySet.from_file(tmp_path / "missing.json", "https://idp")


def test_duplicate_key_ids_refused(authority: TokenAuthority) -> None:
    with pytest.raises(ConfigError, match="duplicate"):
        KeySet.from_authority(authority) | KeySet.from_authority(authority)


def test_cache_is_bounded_lru(authority: TokenAuthority, make_verifier: Callable[..., TokenVerifier]) -> None:
    v = make_verifier(cache_size=3)
    tokens = [authority.issue(sub=f"u{i}", roles=[], audience=AUDIENCE, ttl=60) for i in range(5)]
    for t in tokens:
        v.verify(t)
    assert v.cached == 3
    assert make_verifier(cache_size=0).verify(tokens[0]).sub == "u0"


def test_steady_state_verify_is_fast(authority: TokenAuthority, verifier: TokenVerifier, agent_a: Agent) -> None:
    token = authority.issue(sub=agent_a.spiffe_id, roles=["r"], audience=AUDIENCE, ttl=300,
                            cnf_thumbprint=agent_a.thumbprint)
    kw: dict[str, Any] = {"peer_thumbprint": agent_a.thumbprint, "peer_spiffe_id": agent_a.spiffe_id}
    verifier.verify(token, **kw)
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        verifier.verify(token, **kw)
    per_call = (time.perf_counter() - start) / n
    print(f"{per_call * 1e6:.1f} us per cached verify")
    assert per_call < 50e-6


def test_swapping_keys_updates_hmac_algorithms(authority: TokenAuthority,
                                               make_verifier: Callable[..., TokenVerifier]) -> None:
    v = make_verifier()
    assert v.algorithms == {"ES256", "EdDSA"}
    v.keys = KeySet.from_authority(authority) | KeySet.with_hmac(b"z" * 32, "h", ISSUER)
    assert v.algorithms == {"ES256", "EdDSA", "HS256"}
