"""Token verification, sans-IO: a token, a clock and the peer in; a :class:`VerifiedToken` or a
:class:`TokenError` out. Fails closed; messages never quote the token.

Order on a cache miss: size, shape and JSON (``jws.py``); header rules (alg allow-list, no key
headers, no ``crit``, typ); ``iss`` exact match; key by ``(iss, kid)``; key/alg agreement;
signature; claims. On every call, cached or not: expiry, revocation, certificate binding.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from agentmesh.clock import Clock
from agentmesh.errors import ConfigError, TokenError
from agentmesh.tokens import crypto
from agentmesh.tokens.cache import LRUCache
from agentmesh.tokens.jws import ParsedToken, parse_compact
from agentmesh.tokens.keys import KeySet

__all__ = ["TokenVerifier", "VerifiedToken", "check_principal_token", "verify_jws"]

_KEY_HEADERS = ("jku", "x5u", "jwk", "x5c")  # keys or key locations chosen by the token: never trusted
_ACCEPTED_TYP = frozenset({"at+jwt", "application/at+jwt", "jwt"})
_MAX_DATE = 1e13  # NumericDate sanity bound (~300,000 years)


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """The trusted content of a verified token."""

    sub: str
    roles: tuple[str, ...]
    jti: str
    iss: str
    aud: tuple[str, ...]
    exp: float
    iat: float | None
    bound_thumbprint: str | None  # cnf.x5t#S256
    claims: Mapping[str, Any]
    alg: str = ""  # the JWS algorithm it was signed with


def _never_revoked(jti: str) -> bool:
    return False


def _date(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise TokenError(f"token has no {name} claim")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not -_MAX_DATE < value < _MAX_DATE:
        raise TokenError(f"token {name} claim is invalid")
    return float(value)


def _strings(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TokenError(f"token {what} claim is invalid")
    return tuple(value)


class TokenVerifier:
    """Verifies bearer tokens against configured keys; caches good ones until they expire.

    HMAC algorithms are accepted only for keys from :meth:`KeySet.with_hmac` (configuring a
    secret is the opt-in), and every key verifies only its own algorithm.
    """

    def __init__(
        self,
        keys: KeySet,
        *,
        audience: str,
        issuers: Iterable[str],
        algorithms: Iterable[str] = ("ES256", "EdDSA"),
        leeway: float = 30.0,
        max_token_bytes: int = 8192,
        revoked: Callable[[str], bool] = _never_revoked,
        clock: Clock = time.time,
        cache_size: int = 10000,
        audiences: Mapping[str, str] | None = None,
        roles_claims: Mapping[str, str] | None = None,
    ) -> None:
        if not audience:
            raise ConfigError("tokens.audience must not be empty")
        accepted = frozenset((issuers,) if isinstance(issuers, str) else issuers)
        if not accepted or not all(isinstance(i, str) and i for i in accepted):
            raise ConfigError("at least one non-empty token issuer must be accepted")
        algs = frozenset(algorithms)
        if any(a.lower() == "none" for a in algs):
            raise ConfigError("the 'none' token algorithm is never allowed")
        unknown = algs - crypto.ASYMMETRIC_ALGORITHMS - crypto.HMAC_ALGORITHMS
        if unknown:
            raise ConfigError(f"unknown token algorithms: {', '.join(sorted(unknown))}")
        if leeway < 0 or max_token_bytes <= 0 or cache_size < 0:
            raise ConfigError("leeway, max_token_bytes and cache_size must not be negative")
        self._asymmetric = algs - crypto.HMAC_ALGORITHMS
        self.keys = keys  # also sets self.algorithms
        self.audience = audience
        self.issuers = accepted
        self.leeway = float(leeway)
        self.max_token_bytes = max_token_bytes
        self.revoked = revoked
        self.clock = clock
        self._audiences = dict(audiences or {})
        self._roles_claims = dict(roles_claims or {})
        self._cache: LRUCache[VerifiedToken] = LRUCache(cache_size)

    @property
    def keys(self) -> KeySet:
        return self._keys

    @keys.setter
    def keys(self, keys: KeySet) -> None:
        """Swaps the key set (e.g. after a JWKS refresh); call :meth:`clear_cache` if keys were removed."""
        self._keys = keys
        self.algorithms: frozenset[str] = self._asymmetric | keys.hmac_algorithms

    # ------------------------------------------------------------------ public
    def verify(self, token: str, *, peer_thumbprint: str | None = None, peer_spiffe_id: str | None = None,
               require_binding: bool = False) -> VerifiedToken:
        """Verifies ``token`` presented by the peer with this certificate thumbprint and SPIFFE ID.

        A token with ``cnf.x5t#S256`` must come from that certificate; a ``spiffe://`` subject
        must be bound and equal the peer's ID. ``require_binding`` also refuses unbound tokens.
        """
        vt = self._verified(token)
        _check_binding(vt, peer_thumbprint, peer_spiffe_id, require_binding)
        return vt

    def _verified(self, token: str) -> VerifiedToken:
        """The input checks, signature and claims (cached), then expiry and revocation on every call; no
        binding yet."""
        if not isinstance(token, str) or not token:
            raise TokenError("token missing")
        if len(token) > self.max_token_bytes:
            raise TokenError("token too large")
        if not token.isascii():
            raise TokenError("token is malformed")
        digest = hashlib.sha256(token.encode("ascii")).digest()
        now = self.clock()
        vt = self._cache.get(digest)
        if vt is None:
            vt = self._verify_uncached(token, now)
            if self.revoked(vt.jti):
                raise TokenError("token revoked")
            self._cache.put(digest, vt)
        else:
            if now > vt.exp + self.leeway:
                self._cache.discard(digest)
                raise TokenError("token expired")
            if self.revoked(vt.jti):
                raise TokenError("token revoked")
        return vt

    def verify_unbound(self, token: str) -> VerifiedToken:
        """Verifies an external principal's token (at the bridge, at the exchange): refused when it is an
        agent's (:func:`check_principal_token`)."""
        vt = self._verified(token)
        check_principal_token(vt)
        return vt

    def inspect(self, token: str) -> VerifiedToken:
        """Signature and claims only: no cache, revocation or binding. For tooling, never for callers."""
        if not isinstance(token, str) or not token.isascii():
            raise TokenError("token is malformed")
        return self._verify_uncached(token, self.clock())

    def clear_cache(self) -> None:
        """Forgets verified tokens (e.g. after keys were rotated out)."""
        self._cache.clear()

    @property
    def cached(self) -> int:
        return len(self._cache)

    # ------------------------------------------------------------------ the checks
    def _verify_uncached(self, token: str, now: float) -> VerifiedToken:
        parsed = parse_compact(token, self.max_token_bytes)
        iss = verify_jws(parsed, keys=self._keys, issuers=self.issuers, algorithms=self.algorithms,
                         accepted_typ=_ACCEPTED_TYP)
        return replace(self._check_claims(parsed.claims, iss, now), alg=str(parsed.header["alg"]))

    def _check_claims(self, claims: dict[str, Any], iss: str, now: float) -> VerifiedToken:
        exp = _date(claims, "exp", required=True)
        assert exp is not None
        if now > exp + self.leeway:
            raise TokenError("token expired")
        nbf = _date(claims, "nbf", required=False)
        if nbf is not None and now + self.leeway < nbf:
            raise TokenError("token not yet valid")
        iat = _date(claims, "iat", required=False)
        if iat is not None and iat > now + self.leeway:
            raise TokenError("token issued in the future")
        aud = claims.get("aud")
        if aud is None:
            raise TokenError("token has no aud claim")
        auds = (aud,) if isinstance(aud, str) else _strings(aud, "aud")
        if self._audiences.get(iss, self.audience) not in auds:
            raise TokenError("token is for another audience")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise TokenError("token has no sub claim")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise TokenError("token has no valid jti claim")
        roles_claim = self._roles_claims.get(iss, "roles")
        roles = _strings(claims.get(roles_claim, []), "roles")
        bound = _bound_thumbprint(claims)
        if bound is None and sub.startswith("spiffe://"):
            raise TokenError("token for a SPIFFE subject is not bound to a certificate")
        return VerifiedToken(sub, roles, jti, iss, auds, exp, iat, bound, MappingProxyType(claims))


def verify_jws(parsed: ParsedToken, *, keys: KeySet, issuers: frozenset[str], algorithms: frozenset[str],
               accepted_typ: frozenset[str], typ_required: bool = False) -> str:
    """The header rules and the signature of a parsed JWS; returns its (accepted) issuer.

    Order: alg allow-list, no key headers, no ``crit``/``zip``, typ, kid, ``iss`` exact match, key by
    ``(iss, kid)``, key/alg agreement, signature. Shared by every token kind the mesh verifies.
    """
    header, claims = parsed.header, parsed.claims
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise TokenError("token algorithm not allowed")
    if any(h in header for h in _KEY_HEADERS):
        raise TokenError("token carries a key header, which is never trusted")
    if "crit" in header:
        raise TokenError("token has an unsupported critical header")
    if "zip" in header:
        raise TokenError("token is compressed, which is not supported")
    typ = header.get("typ")
    if typ is None and typ_required:
        raise TokenError("token type not accepted")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in accepted_typ):
        raise TokenError("token type not accepted")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenError("token kid missing")
    iss = claims.get("iss")
    if not isinstance(iss, str) or iss not in issuers:
        raise TokenError("token issuer not accepted")
    key = keys.get(iss, kid)
    if key is None:
        raise TokenError("token kid unknown")
    if key.alg != alg:
        raise TokenError("token algorithm does not match its key")
    if not crypto.verify_signature(alg, key.key, parsed.signing_input, parsed.signature):
        raise TokenError("token signature invalid")
    return iss


def check_principal_token(token: VerifiedToken) -> None:
    """Refuses an agent token (a ``spiffe:`` subject or a certificate-bound token) where only an
    external principal's token may stand: at the bridge and at the exchange. Members act for themselves
    with their own token, never as a transaction's principal."""
    if token.sub.strip().lower().startswith("spiffe:") or token.bound_thumbprint is not None:
        raise TokenError("agent tokens cannot act as a principal (only an external principal's token can)")


def _bound_thumbprint(claims: Mapping[str, Any]) -> str | None:
    if "cnf" not in claims:
        return None
    cnf = claims["cnf"]
    x5t = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
    if not isinstance(x5t, str) or not x5t:
        raise TokenError("token cnf claim is not a supported certificate binding")
    return x5t


def _check_binding(vt: VerifiedToken, peer_thumbprint: str | None, peer_spiffe_id: str | None,
                   require_binding: bool) -> None:
    bound = vt.bound_thumbprint
    if bound is not None:
        if peer_thumbprint is None or not hmac.compare_digest(
                bound.encode("utf-8", "surrogatepass"), peer_thumbprint.encode("utf-8", "surrogatepass")
        ):
            raise TokenError("token is bound to another certificate")
    elif require_binding:
        raise TokenError("token is not bound to a certificate")
    if vt.sub.startswith("spiffe://") and (peer_spiffe_id is None or str(peer_spiffe_id) != vt.sub):
        raise TokenError("token subject does not match the peer identity")
