"""Every forged, tampered, misdirected or replayed token must FAIL, with a message free of the token."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest
from conftest import AUDIENCE, ISSUER, Agent, Forge, b64
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from agentmesh.clock import FakeClock
from agentmesh.errors import ConfigError, TokenError
from agentmesh.tokens import KeySet, RevokedSet, TokenAuthority, TokenVerifier
from agentmesh.tokens.crypto import public_jwk

Attack = tuple[str, dict[str, Any]]


def _p384_sign(key: ec.EllipticCurvePrivateKey, hash_alg: hashes.HashAlgorithm) -> Callable[[bytes], bytes]:
    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hash_alg)))
        n = (key.curve.key_size + 7) // 8
        return r.to_bytes(n, "big") + s.to_bytes(n, "big")
    return sign


@pytest.fixture
def attacks(authority: TokenAuthority, forge: Forge, claims: dict[str, Any], agent_a: Agent,
            agent_b: Agent, clock: FakeClock) -> dict[str, Attack]:
    """name -> (token, verify() keyword arguments)."""
    kid = authority.kid
    good = forge(payload=claims)
    h, p, s = good.split(".")
    pem_pub = authority.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    rogue = ec.generate_private_key(ec.SECP256R1())
    rogue_sign = _p384_sign(rogue, hashes.SHA256())  # P-256 here, same raw r||s encoding
    rogue_jwk = {**public_jwk(rogue), "kid": kid}
    p384 = ec.generate_private_key(ec.SECP384R1())

    def hdr(**kw: Any) -> dict[str, Any]:
        return {"alg": "ES256", "kid": kid, "typ": "at+jwt", **kw}

    def with_claims(**kw: Any) -> dict[str, Any]:
        c = {**claims, **kw}
        return {k: v for k, v in c.items() if v is not ...}

    now = int(clock())
    bound_a = authority.issue(sub=agent_a.spiffe_id, roles=["ingestor"], audience=AUDIENCE, ttl=300,
                              cnf_thumbprint=agent_a.thumbprint)
    as_b = {"peer_thumbprint": agent_b.thumbprint, "peer_spiffe_id": agent_b.spiffe_id}
    out: dict[str, Attack] = {
        # algorithm games
        "alg none": (f"{b64(json.dumps(hdr(alg='none')))}.{p}.", {}),
        "alg none + junk sig": (f"{b64(json.dumps(hdr(alg='none')))}.{p}.{s}", {}),
        "alg None": (forge(hdr(alg="None"), claims, sign=lambda d: b"x"), {}),
        "alg NONE": (forge(hdr(alg="NONE"), claims, sign=lambda d: b"x"), {}),
        "alg missing": (forge({"kid": kid}, claims), {}),
        "alg not a string": (forge(hdr(alg=["ES256"]), claims), {}),
        "HS256 keyed with the public key PEM": (
            forge(hdr(alg="HS256"), claims, sign=lambda d: hmac.new(pem_pub, d, hashlib.sha256).digest()), {}),
        "RS256 header on EC key": (forge(hdr(alg="RS256"), claims), {}),
        # signatures
        "missing signature": (f"{h}.{p}.", {}),
        "two segments": (f"{h}.{p}", {}),
        "truncated signature": (f"{h}.{p}.{s[:-8]}", {}),
        "signature of another token": (f"{h}.{b64(json.dumps(with_claims(sub='admin')))}.{s}", {}),
        "signed by a rogue key with our kid": (forge(hdr(), claims, sign=rogue_sign), {}),
        # key selection
        "unknown kid": (forge(hdr(kid="nope"), claims), {}),
        "kid missing": (forge({"alg": "ES256", "typ": "at+jwt"}, claims), {}),
        "kid path traversal": (forge(hdr(kid="../../etc/passwd"), claims), {}),
        "kid /dev/null": (forge(hdr(kid="/dev/null"), claims), {}),
        "embedded jwk": (forge(hdr(jwk=rogue_jwk), claims, sign=rogue_sign), {}),
        "jku header": (forge(hdr(jku="https://evil.example/jwks.json"), claims), {}),
        "x5u header": (forge(hdr(x5u="https://evil.example/cert.pem"), claims), {}),
        "x5c header": (forge(hdr(x5c=["MIIB"]), claims), {}),
        "ES256 header, P-384 signature": (forge(hdr(), claims, sign=_p384_sign(p384, hashes.SHA256())), {}),
        # headers
        "unknown crit": (forge(hdr(crit=["exp-bogus"], **{"exp-bogus": 1}), claims), {}),
        "empty crit": (forge(hdr(crit=[]), claims), {}),
        "b64 false": (forge(hdr(b64=False, crit=["b64"]), claims), {}),
        "zip header": (forge(hdr(zip="DEF"), claims), {}),
        "wrong typ": (forge(hdr(typ="dpop+jwt"), claims), {}),
        # time
        "expired": (forge(payload=with_claims(exp=now - 31, iat=now - 400, nbf=now - 400)), {}),
        "nbf in the future": (forge(payload=with_claims(nbf=now + 120)), {}),
        "iat in the future": (forge(payload=with_claims(iat=now + 120)), {}),
        "missing exp": (forge(payload=with_claims(exp=...)), {}),
        "exp a string": (forge(payload=with_claims(exp=str(now + 300))), {}),
        "exp a bool": (forge(payload=with_claims(exp=True)), {}),
        "exp huge": (forge(payload=with_claims(exp=10**400)), {}),
        # issuer / audience
        "missing iss": (forge(payload=with_claims(iss=...)), {}),
        "issuer prefix": (forge(payload=with_claims(iss="spiffe://example.or")), {}),
        "issuer suffix": (forge(payload=with_claims(iss=ISSUER + ".evil.com")), {}),
        "issuer trailing slash": (forge(payload=with_claims(iss=ISSUER + "/")), {}),
        "issuer embedded": (forge(payload=with_claims(iss="x" + ISSUER)), {}),
        "issuer as list": (forge(payload=with_claims(iss=[ISSUER])), {}),
        "missing aud": (forge(payload=with_claims(aud=...)), {}),
        "another audience": (forge(payload=with_claims(aud="billing")), {}),
        "audience prefix": (forge(payload=with_claims(aud=AUDIENCE + "-x")), {}),
        "audience list without ours": (forge(payload=with_claims(aud=["billing", "agentmes"])), {}),
        "audience list with non-string": (forge(payload=with_claims(aud=[AUDIENCE, 1])), {}),
        # subject, jti, roles, cnf
        "missing sub": (forge(payload=with_claims(sub=...)), {}),
        "missing jti": (forge(payload=with_claims(jti=...)), {}),
        "roles a string": (forge(payload=with_claims(roles="admin")), {}),
        "roles with a non-string": (forge(payload=with_claims(roles=["client", 1])), {}),
        "roles nested list": (forge(payload=with_claims(roles=[["admin"]])), {}),
        "roles with null": (forge(payload=with_claims(roles=[None])), {}),
        "roles an object": (forge(payload=with_claims(roles={"admin": True})), {}),
        "cnf with jkt only": (forge(payload=with_claims(cnf={"jkt": "abc"})), {}),
        "cnf not an object": (forge(payload=with_claims(cnf="abc")), {}),
        # binding
        "bound to A, presented by B": (bound_a, as_b),
        "bound to A, B's thumbprint with A's SPIFFE ID": (
            bound_a, {"peer_thumbprint": agent_b.thumbprint, "peer_spiffe_id": agent_a.spiffe_id}),
        "bound to A, A's thumbprint with B's SPIFFE ID": (
            bound_a, {"peer_thumbprint": agent_a.thumbprint, "peer_spiffe_id": agent_b.spiffe_id}),
        "bound to A, no peer": (bound_a, {}),
        "SPIFFE subject without cnf": (
            forge(payload=with_claims(sub=agent_a.spiffe_id)),
            {"peer_thumbprint": agent_a.thumbprint, "peer_spiffe_id": agent_a.spiffe_id}),
        "bound to A, subject B's SPIFFE ID": (
            authority.issue(sub=agent_b.spiffe_id, roles=["x"], audience=AUDIENCE, ttl=300,
                            cnf_thumbprint=agent_a.thumbprint),
            {"peer_thumbprint": agent_a.thumbprint, "peer_spiffe_id": agent_a.spiffe_id}),
        # shape and JSON
        "one segment": ("abc", {}),
        "four segments": (f"{good}.{s}", {}),
        "empty header": (f".{p}.{s}", {}),
        "empty": ("", {}),
        "header not base64url": (f"{h}!.{p}.{s}", {}),
        "padded base64": (f"{h}==.{p}.{s}", {}),
        "header not JSON": (f"{b64('not json')}.{p}.{s}", {}),
        "header a JSON array": (f"{b64('[1,2]')}.{p}.{s}", {}),
        "payload not UTF-8": (f"{h}.{b64(bytes([0xff, 0xfe]))}.{s}", {}),
        "payload NaN exp": (forge(payload=json.dumps(claims)[:-1] + ', "nbf2": NaN}'), {}),
        "deeply nested JSON": (forge(payload='{"a":' + "[" * 1500 + "]" * 1500 + "}"), {}),
        "duplicate alg in header": (
            forge(f'{{"alg":"ES256","kid":"{kid}","alg":"none"}}', claims), {}),
        "duplicate sub in payload": (
            forge(payload=json.dumps(claims)[:-1] + ', "sub": "admin"}'), {}),
        "duplicate member nested in cnf": (
            forge(payload=json.dumps(claims)[:-1] + ', "cnf": {"x5t#S256": "a", "x5t#S256": "b"}}'), {}),
        "non-ASCII token": (good[:-1] + "é", {}),
        "oversized": (good + "." + "A" * 9000, {}),
        "oversized but otherwise valid": (forge(payload=with_claims(pad="A" * 9000)), {}),
    }
    return out


ATTACK_NAMES = [
    "alg none", "alg none + junk sig", "alg None", "alg NONE", "alg missing", "alg not a string",
    "HS256 keyed with the public key PEM", "RS256 header on EC key", "missing signature", "two segments",
    "truncated signature", "signature of another token", "signed by a rogue key with our kid",
    "unknown kid", "kid missing", "kid path traversal", "kid /dev/null", "embedded jwk", "jku header",
    "x5u header", "x5c header", "ES256 header, P-384 signature", "unknown crit", "empty crit", "b64 false",
    "zip header", "wrong typ", "expired", "nbf in the future", "iat in the future", "missing exp",
    "exp a string", "exp a bool", "exp huge", "missing iss", "issuer prefix", "issuer suffix",
    "issuer trailing slash", "issuer embedded", "issuer as list", "missing aud", "another audience",
    "audience prefix", "audience list without ours", "audience list with non-string", "missing sub",
    "missing jti", "roles a string", "roles with a non-string", "roles nested list", "roles with null",
    "roles an object", "cnf with jkt only", "cnf not an object", "bound to A, presented by B",
    "bound to A, B's thumbprint with A's SPIFFE ID", "bound to A, A's thumbprint with B's SPIFFE ID",
    "bound to A, no peer", "SPIFFE subject without cnf", "bound to A, subject B's SPIFFE ID",
    "one segment", "four segments", "empty header", "empty", "header not base64url", "padded base64",
    "header not JSON", "header a JSON array", "payload not UTF-8", "payload NaN exp", "deeply nested JSON",
    "duplicate alg in header", "duplicate sub in payload", "duplicate member nested in cnf",
    "non-ASCII token", "oversized", "oversized but otherwise valid",
]


def test_attack_list_is_complete(attacks: dict[str, Attack]) -> None:
    assert sorted(attacks) == sorted(ATTACK_NAMES)


def _assert_clean(message: str, token: str) -> None:
    assert token not in message or not token
    for part in token.split("."):
        if len(part) >= 6:
            assert part not in message
            assert part[:6] not in message


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attack_fails(name: str, attacks: dict[str, Attack], verifier: TokenVerifier) -> None:
    token, kw = attacks[name]
    with pytest.raises(TokenError) as err:
        verifier.verify(token, **kw)
    _assert_clean(err.value.message, token)
    assert len(err.value.message) < 80


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attack_fails_with_hmac_and_every_algorithm_allowed(
        name: str, attacks: dict[str, Attack], authority: TokenAuthority,
        make_verifier: Callable[..., TokenVerifier]) -> None:
    """A permissive verifier (HMAC key configured, more algorithms) still refuses all of them."""
    keys = KeySet.from_authority(authority) | KeySet.with_hmac(b"s" * 32, "hmac", ISSUER)
    v = make_verifier(keys, algorithms=("ES256", "ES384", "EdDSA", "HS256", "RS256"))
    token, kw = attacks[name]
    with pytest.raises(TokenError):
        v.verify(token, **kw)


def test_key_confusion_with_hmac_configured_hits_the_key_algorithm_check(
        attacks: dict[str, Attack], authority: TokenAuthority,
        make_verifier: Callable[..., TokenVerifier]) -> None:
    keys = KeySet.from_authority(authority) | KeySet.with_hmac(b"s" * 32, "hmac", ISSUER)
    v = make_verifier(keys, algorithms=("ES256", "HS256"))
    token, _ = attacks["HS256 keyed with the public key PEM"]
    with pytest.raises(TokenError, match="algorithm does not match its key"):
        v.verify(token)


def test_deep_json_is_malformed_not_a_crash(attacks: dict[str, Attack], verifier: TokenVerifier) -> None:
    token, _ = attacks["deeply nested JSON"]
    assert len(token) < verifier.max_token_bytes
    with pytest.raises(TokenError, match="malformed"):
        verifier.verify(token)


def test_hs256_with_public_key_refused_even_as_hmac_secret(authority: TokenAuthority) -> None:
    pem_pub = authority.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ConfigError):
        KeySet.with_hmac(pem_pub, "hmac", ISSUER)


def test_wrong_curve_key_in_jwks_never_verifies_es256(forge: Forge, claims: dict[str, Any],
                                                       make_verifier: Callable[..., TokenVerifier]) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    keys = KeySet.from_jwks({"keys": [{**public_jwk(p384), "kid": "k384"}]}, ISSUER)
    v = make_verifier(keys, algorithms=("ES256", "ES384"))
    header = {"alg": "ES256", "kid": "k384"}
    token = forge(header, claims, sign=_p384_sign(p384, hashes.SHA256()))
    with pytest.raises(TokenError, match="algorithm does not match"):
        v.verify(token)
    # the same key with its own algorithm is fine
    ok = forge({"alg": "ES384", "kid": "k384"}, claims, sign=_p384_sign(p384, hashes.SHA384()))
    assert v.verify(ok).sub == "alice"


def test_key_of_one_issuer_cannot_sign_for_another(forge: Forge, claims: dict[str, Any],
                                                    authority: TokenAuthority,
                                                    make_verifier: Callable[..., TokenVerifier]) -> None:
    ext = ed25519.Ed25519PrivateKey.generate()
    keys = KeySet.from_authority(authority) | KeySet.from_jwks(
        {"keys": [{**public_jwk(ext), "kid": "ext-1"}]}, "https://idp.example.com")
    v = make_verifier(keys, issuers={ISSUER, "https://idp.example.com"})
    token = forge({"alg": "EdDSA", "kid": "ext-1"}, claims, sign=ext.sign)  # iss is the mesh
    with pytest.raises(TokenError, match="kid unknown"):
        v.verify(token)


def test_bound_token_replayed_by_another_agent_after_caching(
        authority: TokenAuthority, verifier: TokenVerifier, agent_a: Agent, agent_b: Agent) -> None:
    token = authority.issue(sub=agent_a.spiffe_id, roles=["ingestor"], audience=AUDIENCE, ttl=300,
                            cnf_thumbprint=agent_a.thumbprint)
    vt = verifier.verify(token, peer_thumbprint=agent_a.thumbprint, peer_spiffe_id=agent_a.spiffe_id)
    assert vt.bound_thumbprint == agent_a.thumbprint
    assert verifier.cached == 1
    with pytest.raises(TokenError, match="bound to another certificate"):
        verifier.verify(token, peer_thumbprint=agent_b.thumbprint, peer_spiffe_id=agent_b.spiffe_id)
    with pytest.raises(TokenError, match="agent tokens cannot act as a principal"):
        verifier.verify_unbound(token)  # where only an external principal's token may stand
    with pytest.raises(TokenError, match="peer identity"):
        verifier.verify(token, peer_thumbprint=agent_a.thumbprint, peer_spiffe_id=agent_b.spiffe_id)
    # and A itself still gets through
    verifier.verify(token, peer_thumbprint=agent_a.thumbprint, peer_spiffe_id=agent_a.spiffe_id)


def test_revoked_jti_fails_also_when_cached(authority: TokenAuthority,
                                            make_verifier: Callable[..., TokenVerifier]) -> None:
    revoked = RevokedSet()
    v = make_verifier(revoked=revoked)
    token = authority.issue(sub="alice", roles=["client"], audience=AUDIENCE, ttl=300)
    vt = v.verify(token)
    assert v.cached == 1
    revoked.update([vt.jti])
    with pytest.raises(TokenError, match="revoked"):
        v.verify(token)
    fresh = make_verifier(revoked=revoked)
    with pytest.raises(TokenError, match="revoked"):
        fresh.verify(token)
    assert fresh.cached == 0


def test_cached_token_expires(authority: TokenAuthority, verifier: TokenVerifier, clock: FakeClock) -> None:
    token = authority.issue(sub="alice", roles=["client"], audience=AUDIENCE, ttl=60)
    verifier.verify(token)
    clock.advance(60 + 30)  # within leeway
    verifier.verify(token)
    clock.advance(1.5)
    with pytest.raises(TokenError, match="expired"):
        verifier.verify(token)
    assert verifier.cached == 0


def test_require_binding_refuses_unbound(authority: TokenAuthority, verifier: TokenVerifier,
                                         agent_a: Agent) -> None:
    token = authority.issue(sub="alice", roles=["client"], audience=AUDIENCE, ttl=60)
    with pytest.raises(TokenError, match="not bound"):
        verifier.verify(token, peer_thumbprint=agent_a.thumbprint, peer_spiffe_id=agent_a.spiffe_id,
                        require_binding=True)


def test_none_algorithm_cannot_be_configured(authority: TokenAuthority) -> None:
    for alg in ("none", "None", "NONE"):
        with pytest.raises(ConfigError):
            TokenVerifier(KeySet.from_authority(authority), audience=AUDIENCE, issuers={ISSUER},
                          algorithms=("ES256", alg))


def test_issuers_given_as_a_string_are_not_a_set_of_characters(
        authority: TokenAuthority, forge: Forge, claims: dict[str, Any]) -> None:
    v = TokenVerifier(KeySet.from_authority(authority), audience=AUDIENCE, issuers=ISSUER)
    assert v.issuers == frozenset({ISSUER})
    with pytest.raises(TokenError, match="issuer"):
        v.verify(forge(payload={**claims, "iss": "s"}))


def test_jwks_with_private_or_symmetric_keys_is_refused() -> None:
    priv = ec.generate_private_key(ec.SECP256R1())
    from jwt.algorithms import ECAlgorithm
    jwk = ECAlgorithm.to_jwk(priv, as_dict=True)
    with pytest.raises(ConfigError, match="private key"):
        KeySet.from_jwks({"keys": [{**jwk, "kid": "p"}]}, ISSUER)
    with pytest.raises(ConfigError, match="symmetric"):
        KeySet.from_jwks({"keys": [{"kty": "oct", "k": b64(b"s" * 32), "kid": "o"}]}, ISSUER)
