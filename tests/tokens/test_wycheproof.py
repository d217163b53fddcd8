"""Project Wycheproof vectors (vendored in ``wycheproof/`` with their licence) against our JWS verification.

* ``json_web_signature_test.json``: every compact JWS goes through our strict parsing (``jws.py``:
  shape, base64url, header JSON), our key handling (``keys.parse_jwks``: ``use``, ``key_ops``, declared
  ``alg``) and :func:`verify_jws` (alg allow-list, key headers, key/alg agreement, signature). The vectors'
  payloads are opaque bytes (``"foo"``), never a JWT claims set, so the payload is decoded strictly and
  the claims :func:`verify_jws` reads are a stand-in naming our test issuer; that a JWT whose payload is
  not a JSON object is refused is checked on its own (:func:`test_jwt_layer_refuses_every_vector`).
  The verifier is configured as wide as our policy allows (every asymmetric algorithm, HMAC opted in with
  the group's secret) so the cryptography is exercised; :data:`POLICY_REFUSED` lists the valid vectors
  our policy refuses, and why. Invalid vectors must be refused, whatever the reason.
* ``ecdsa_secp256r1_sha256_p1363_test.json``: every ES256 (IEEE P1363 r||s) signature through
  :func:`agentmesh.tokens.crypto.verify_signature`, the one function every JWS signature check ends in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agentmesh.errors import ConfigError, TokenError
from agentmesh.tokens import KeySet, crypto
from agentmesh.tokens.jws import ParsedToken, _json_object, parse_compact
from agentmesh.tokens.verify import verify_jws

HERE = Path(__file__).parent / "wycheproof"
ISSUER = "https://wycheproof.example"
WIDEST = crypto.ASYMMETRIC_ALGORITHMS  # plus the HMAC algorithm of a configured secret (KeySet.with_hmac)
DEFAULT = frozenset({"ES256", "EdDSA"})  # TokenVerifier's default allow-list
TYP = frozenset({"at+jwt", "application/at+jwt", "jwt"})

#: valid vectors our policy refuses (tcId -> why); each must be refused, and for this reason only
POLICY_REFUSED: dict[int, str] = {
    **{tc: "payload not base64url: strict base64url (RFC 7515 section 2), no character is skipped"
       for tc in (372, 373)},
    **{tc: "the key declares alg PS256, the JWS uses PS384: every key verifies exactly one algorithm"
       for tc in (346, 350)},
    **{tc: "the JWK declares alg 'ES521' (not a JWS algorithm), so the key is refused when loaded"
       for tc in (347, 351)},
}

#: vectors that contradict another vector: no verifier can pass both (tcId -> why)
CONTRADICTORY: dict[int, str] = {
    tc: "the vendored JWS is byte for byte tc357 (valid); the padding its comment names is not in the string"
    for tc in (367, 370)
}


@dataclass(frozen=True)
class Vector:
    tc_id: int
    comment: str
    jws: Any
    valid: bool
    group: dict[str, Any]

    def __str__(self) -> str:
        return f"tc{self.tc_id}-{self.comment}"


def _load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((HERE / name).read_text())
    return doc


@cache
def jws_vectors() -> tuple[Vector, ...]:
    doc = _load("json_web_signature_test.json")
    out = [Vector(t["tcId"], t["comment"], t["jws"], t["result"] == "valid", g)
           for g in doc["testGroups"] for t in g["tests"]]
    assert len(out) == doc["numberOfTests"]
    return tuple(out)


def keys_of(group: dict[str, Any]) -> KeySet:
    """The group's verification key as our configuration would load it (ConfigError when refused)."""
    jwk = group.get("public") or group["private"]
    if jwk.get("kty") == "oct":  # a shared secret is configured as one, never taken from a JWKS
        if jwk.get("use", "sig") != "sig" or "verify" not in jwk.get("key_ops", ["verify"]):
            raise ConfigError("not a signing key")
        return KeySet.with_hmac(crypto.b64url_decode(jwk["k"]), jwk["kid"], ISSUER, alg=jwk.get("alg", "HS256"))
    return KeySet.from_jwks({"keys": [jwk]}, ISSUER)


def verify_compact_jws(token: object, keys: KeySet, algorithms: frozenset[str]) -> None:
    """Our verification of a compact JWS whose payload is opaque bytes; TokenError when refused."""
    if not isinstance(token, str) or not token.isascii():
        raise TokenError("token is malformed")
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise TokenError("token is malformed")
    h, p, s = parts
    header = _json_object(h, "header")
    try:
        crypto.b64url_decode(p)
        signature = crypto.b64url_decode(s)
    except ValueError:
        raise TokenError("token is malformed") from None
    parsed = ParsedToken(header, {"iss": ISSUER}, f"{h}.{p}".encode("ascii"), signature)
    verify_jws(parsed, keys=keys, issuers=frozenset({ISSUER}), algorithms=algorithms | keys.hmac_algorithms,
               accepted_typ=TYP)


def outcome(v: Vector, algorithms: frozenset[str] = WIDEST) -> str | None:
    """None when ``v`` verifies, else the refusal's message."""
    try:
        keys = keys_of(v.group)
    except ConfigError as e:
        return f"key refused: {e.message}"
    try:
        verify_compact_jws(v.jws, keys, algorithms)
    except TokenError as e:
        return e.message
    return None


def _params() -> list[Any]:
    return [pytest.param(v, id=str(v), marks=[pytest.mark.xfail(strict=True, reason=CONTRADICTORY[v.tc_id])]
                         if v.tc_id in CONTRADICTORY else []) for v in jws_vectors()]


@pytest.mark.parametrize("v", _params())
def test_json_web_signature_vector(v: Vector) -> None:
    refused = outcome(v)
    if not v.valid:
        assert refused is not None, f"{v}: an invalid JWS verified"
    elif v.tc_id in POLICY_REFUSED:
        assert refused is not None, f"{v}: listed as refused by policy ({POLICY_REFUSED[v.tc_id]}) but verified"
    else:
        assert refused is None, f"{v}: a valid JWS was refused: {refused}"


def test_policy_refusals_are_listed_and_are_valid_vectors() -> None:
    by_id = {v.tc_id: v for v in jws_vectors()}
    assert all(by_id[tc].valid for tc in POLICY_REFUSED)
    refused_valid = {v.tc_id for v in jws_vectors() if v.valid and outcome(v) is not None}
    assert refused_valid == set(POLICY_REFUSED)


def test_default_allow_list_accepts_only_es256_and_eddsa() -> None:
    """With the verifier's default algorithms, only the valid ES256 vectors verify (no RSA, no HMAC)."""
    verified = {v.tc_id for v in jws_vectors() if is_asymmetric(v) and outcome(v, DEFAULT) is None}
    es256 = {v.tc_id for v in jws_vectors() if v.valid and v.group.get("public", {}).get("alg") == "ES256"}
    assert verified == es256 == {18, 378}


def is_asymmetric(v: Vector) -> bool:
    return (v.group.get("public") or v.group["private"]).get("kty") != "oct"


def test_jwt_layer_refuses_every_vector() -> None:
    """``parse_compact`` (a JWT: the payload must be a JSON object) refuses every vector, with a TokenError."""
    for v in jws_vectors():
        with pytest.raises(TokenError):
            parse_compact(v.jws, 8192)


# ---------------------------------------------------------------------- ES256, IEEE P1363 signatures
@dataclass(frozen=True)
class EcdsaVector:
    tc_id: int
    comment: str
    msg: bytes
    sig: bytes
    valid: bool
    key: ec.EllipticCurvePublicKey

    def __str__(self) -> str:
        return f"tc{self.tc_id}"


def _ecdsa_vectors() -> Iterator[EcdsaVector]:
    doc = _load("ecdsa_secp256r1_sha256_p1363_test.json")
    for g in doc["testGroups"]:
        assert g["sha"] == "SHA-256" and g["publicKey"]["curve"] == "secp256r1"
        if "publicKeyJwk" in g:  # loaded as a JWKS would be
            key, alg = crypto.key_from_jwk(g["publicKeyJwk"])
        else:  # a few edge-case keys come as DER only
            key = serialization.load_der_public_key(bytes.fromhex(g["publicKeyDer"]))
            alg = crypto.signing_algorithm(key)
        assert alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey)
        for t in g["tests"]:
            assert t["result"] in ("valid", "invalid"), t  # no "acceptable" in this file
            yield EcdsaVector(t["tcId"], t["comment"], bytes.fromhex(t["msg"]), bytes.fromhex(t["sig"]),
                              t["result"] == "valid", key)


ECDSA = tuple(_ecdsa_vectors())


def test_ecdsa_p1363_vectors() -> None:
    assert len(ECDSA) == _load("ecdsa_secp256r1_sha256_p1363_test.json")["numberOfTests"]
    wrong = [f"{v} ({v.comment}): expected {'valid' if v.valid else 'invalid'}" for v in ECDSA
             if crypto.verify_signature("ES256", v.key, v.msg, v.sig) is not v.valid]
    assert not wrong, "\n".join(wrong)
