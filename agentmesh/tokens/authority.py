"""The mesh token issuer: one signing key beside the CA (``<ca_dir>/token-key.pem``, 0600)."""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agentmesh.clock import Clock
from agentmesh.errors import ConfigError, PKIError
from agentmesh.pki.ca import write_private
from agentmesh.tokens import crypto

__all__ = ["KEY_FILE", "RESERVED_CLAIMS", "TokenAuthority", "default_issuer"]

KEY_FILE = "token-key.pem"
_TYP_HEADER = "at+jwt"
RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "roles", "cnf"})


def default_issuer(ca_dir: str | Path) -> str:
    """``spiffe://<trust domain>`` of the CA in ``ca_dir``."""
    meta = Path(ca_dir) / "ca.json"
    try:
        td = json.loads(meta.read_text())["trust_domain"]
    except FileNotFoundError:
        raise PKIError(f"no CA in {Path(ca_dir)} (create one with: agentmesh ca init)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PKIError(f"cannot read {meta} ({e.__class__.__name__})") from None
    return f"spiffe://{td}"


def _segment(obj: Mapping[str, Any]) -> str:
    return crypto.b64url_encode(json.dumps(obj, separators=(",", ":")).encode())


class TokenAuthority:
    """Signs access tokens (RFC 9068 ``at+jwt``) with the mesh token key."""

    def __init__(self, key: crypto.SigningKey, algorithm: str, *, issuer: str,
                 clock: Clock = time.time) -> None:
        if not issuer:
            raise ConfigError("a token issuer must not be empty")
        self.key = key
        self.algorithm = algorithm
        self.issuer = issuer
        self.clock = clock
        self._public_jwk = crypto.public_jwk(key)
        self.kid = crypto.jwk_thumbprint(self._public_jwk)

    # ------------------------------------------------------------------ create / open
    @staticmethod
    def init(ca_dir: str | Path, *, force: bool = False, algorithm: str = "ES256") -> Path:
        """Creates the signing key (ES256 P-256 or EdDSA Ed25519); returns its path."""
        d = Path(ca_dir)
        if not d.is_dir():
            raise PKIError(f"no CA directory {d} (create one with: agentmesh ca init)")
        path = d / KEY_FILE
        if path.exists() and not force:
            raise PKIError(f"a token signing key already exists in {d} (use --force to replace it)")
        write_private(path, crypto.dump_private_key(crypto.generate_key(algorithm)))
        return path

    @classmethod
    def load(cls, ca_dir: str | Path, *, issuer: str, clock: Clock = time.time) -> TokenAuthority:
        key, alg = crypto.load_private_key(Path(ca_dir) / KEY_FILE)
        return cls(key, alg, issuer=issuer, clock=clock)

    @classmethod
    def ensure(cls, ca_dir: str | Path, *, issuer: str, algorithm: str = "ES256",
               clock: Clock = time.time) -> TokenAuthority:
        """Loads the authority, creating its key first if there is none yet."""
        if not (Path(ca_dir) / KEY_FILE).exists():
            cls.init(ca_dir, algorithm=algorithm)
        return cls.load(ca_dir, issuer=issuer, clock=clock)

    # ------------------------------------------------------------------ publish / sign
    def jwks(self) -> dict[str, Any]:
        """The JWKS document of the public key."""
        jwk = {**self._public_jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}
        return {"keys": [jwk]}

    def issue(self, *, sub: str, roles: Sequence[str], audience: str, ttl: float,
              cnf_thumbprint: str | None = None, extra: Mapping[str, Any] | None = None) -> str:
        """A signed token; with ``cnf_thumbprint`` it is bound to that certificate (RFC 8705)."""
        if not isinstance(sub, str) or not sub:
            raise ConfigError("a token subject must be a non-empty string")
        if isinstance(roles, str) or not all(isinstance(r, str) and r for r in roles):
            raise ConfigError("token roles must be a list of non-empty strings")
        if not audience:
            raise ConfigError("a token audience must not be empty")
        if not ttl > 0:
            raise ConfigError("a token lifetime must be positive")
        clash = RESERVED_CLAIMS.intersection(extra or {})
        if clash:
            raise ConfigError(f"extra claims may not set {', '.join(sorted(clash))}")
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": sub, "aud": audience,
            "iat": now, "nbf": now, "exp": now + math.ceil(ttl),
            "jti": secrets.token_hex(16), "roles": list(roles),
        }
        if cnf_thumbprint is None and sub.startswith("spiffe://"):
            raise ConfigError("a token for a spiffe:// subject must be bound to its certificate")
        if cnf_thumbprint is not None:
            if not cnf_thumbprint:
                raise ConfigError("a certificate thumbprint must not be empty")
            claims["cnf"] = {"x5t#S256": cnf_thumbprint}
        claims.update(extra or {})
        header = {"alg": self.algorithm, "kid": self.kid, "typ": _TYP_HEADER}
        signing_input = f"{_segment(header)}.{_segment(claims)}"
        signature = crypto.sign(self.algorithm, self.key, signing_input.encode("ascii"))
        return f"{signing_input}.{crypto.b64url_encode(signature)}"
