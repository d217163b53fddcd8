"""The one place that touches pyjwt and cryptography; their exceptions become mesh errors here.

Everything else in :mod:`agentmesh.tokens` deals in plain values: algorithm names, prepared key
objects, bytes and dicts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import InvalidKeyError, PyJWTError

from agentmesh.errors import ConfigError, PKIError

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "SIGNING_ALGORITHMS",
    "SigningKey",
    "b64url_decode",
    "b64url_encode",
    "dump_private_key",
    "generate_key",
    "jwk_thumbprint",
    "key_from_jwk",
    "load_private_key",
    "prepare_hmac_key",
    "public_jwk",
    "sign",
    "signing_algorithm",
    "verify_signature",
]

SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
#: Algorithm name -> pyjwt implementation. "none" is deliberately absent.
_ALGS: dict[str, Algorithm] = {k: v for k, v in get_default_algorithms().items() if k.lower() != "none"}
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(_ALGS) - HMAC_ALGORITHMS
SIGNING_ALGORITHMS = ("ES256", "EdDSA")  # what a TokenAuthority can sign with
_EC_ALG = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}
_EC_CURVE_ALG = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512", "secp256k1": "ES256K"}
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
# RFC 7638: the required members of each key type, in lexicographic order.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"),
                       "RSA": ("e", "kty", "n"), "oct": ("k", "kty")}


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    """Strict base64url without padding; ValueError on anything else.

    Canonical only: the unused low bits of the last character must be zero (RFC 4648 section 3.5), so
    one byte string has one encoding and a token cannot be re-spelt without breaking its signature.
    """
    if not _B64URL.match(segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if b64url_encode(data) != segment:
        raise ValueError("not canonical base64url")
    return data


# ---------------------------------------------------------------------- private keys (authority)
def generate_key(algorithm: str) -> SigningKey:
    """A fresh signing key: P-256 for ES256, Ed25519 for EdDSA."""
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ConfigError(f"token signing algorithm must be one of {', '.join(SIGNING_ALGORITHMS)}, "
                      f"got {algorithm!r}")


def dump_private_key(key: SigningKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_private_key(path: Path) -> tuple[SigningKey, str]:
    """Reads a PEM signing key and tells its algorithm; PKIError when absent or unusable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PKIError(f"no token signing key at {path} (create one with: agentmesh token init "
                       f"--ca {path.parent})") from None
    except PermissionError:
        raise PKIError(f"cannot read the token signing key {path}: permission denied") from None
    except OSError as e:
        raise PKIError(f"cannot read the token signing key {path} ({e.__class__.__name__})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PKIError(f"the token signing key {path} is damaged or encrypted") from None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key, "EdDSA"
    raise PKIError(f"the token signing key {path} is neither P-256 nor Ed25519")


def sign(algorithm: str, key: Any, signing_input: bytes) -> bytes:
    return _ALGS[algorithm].sign(signing_input, key)


# ---------------------------------------------------------------------- public keys and JWKs
def public_jwk(key: SigningKey) -> dict[str, str]:
    """The public JWK members (kty, crv, x[, y]) of a signing key."""
    pub = key.public_key()
    alg = "EdDSA" if isinstance(pub, ed25519.Ed25519PublicKey) else "ES256"
    jwk: dict[str, Any] = _ALGS[alg].to_jwk(pub, as_dict=True)
    return {k: str(v) for k, v in jwk.items()}


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url)."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None or any(not isinstance(jwk.get(m), str) for m in members):
        raise ConfigError("cannot compute a JWK thumbprint: unsupported or incomplete key")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url_encode(hashlib.sha256(canonical.encode()).digest())


def signing_algorithm(key: object, declared: object = None) -> str:
    """The one algorithm a public key verifies; a declared JWK ``alg`` must agree with the key."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_CURVE_ALG.get(key.curve.name)
        if alg is None:
            raise ConfigError(f"unsupported EC curve {key.curve.name}")
        if declared not in (None, alg):
            raise ConfigError(f"JWK alg {declared!r} does not match its {key.curve.name} key")
        return alg
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        if declared not in (None, "EdDSA"):
            raise ConfigError(f"JWK alg {declared!r} does not match its EdDSA key")
        return "EdDSA"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ConfigError("RSA keys shorter than 2048 bits are refused")
        if declared is None:
            return "RS256"
        if declared not in _RSA_ALGS:
            raise ConfigError(f"JWK alg {declared!r} does not match its RSA key")
        return str(declared)
    raise ConfigError("unsupported public key type")


def key_from_jwk(jwk: Mapping[str, Any]) -> tuple[Any, str]:
    """A prepared public key and its algorithm from a JWK; private or symmetric JWKs are refused."""
    kty = jwk.get("kty")
    if kty == "oct":
        raise ConfigError("symmetric keys are never taken from a JWKS")
    if "d" in jwk:
        raise ConfigError("the JWKS contains a private key; publish public keys only")
    impl = {"EC": _ALGS["ES256"], "OKP": _ALGS["EdDSA"], "RSA": _ALGS["RS256"]}.get(str(kty))
    if impl is None:
        raise ConfigError(f"unsupported JWK key type {kty!r}")
    try:
        key = impl.from_jwk(dict(jwk))
    except (PyJWTError, ValueError, TypeError, KeyError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"invalid {kty} JWK ({e.__class__.__name__})") from None
    if isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        raise ConfigError("the JWKS contains a private key; publish public keys only")
    return key, signing_algorithm(key, jwk.get("alg"))


def prepare_hmac_key(secret: bytes) -> bytes:
    """Checks an HMAC secret (>= 32 bytes, not a PEM/SSH key) the way pyjwt would use it."""
    if len(secret) < 32:
        raise ConfigError("the HMAC token secret must be at least 32 bytes")
    try:
        return bytes(_ALGS["HS256"].prepare_key(secret))
    except InvalidKeyError:
        raise ConfigError("the HMAC token secret looks like an asymmetric key; use random bytes") from None


def verify_signature(algorithm: str, key: Any, signing_input: bytes, signature: bytes) -> bool:
    """True only for a valid signature; any library failure is a plain False."""
    impl = _ALGS.get(algorithm)
    if impl is None:
        return False
    try:
        return bool(impl.verify(signing_input, key, signature))
    except Exception:  # a malformed signature or key mismatch is just "invalid"
        return False
