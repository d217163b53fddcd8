"""Transaction tokens (IETF OAuth Transaction Tokens, draft-ietf-oauth-transaction-tokens): what the
control plane (the mesh's Transaction Token Service) issues in exchange for a verified external token,
and what every member verifies on a delegated call.

A transaction token is a JWS (``typ: txntoken+jwt``) signed with the mesh token key. Claims, with the
draft's names: ``txn`` (unique id of the transaction, also the audit correlation id), ``sub`` (the
principal), ``scope`` (space-separated), ``tctx`` (the immutable authorization context: roles, the
entry route, the subject token's jti so revoking it ends the transaction), ``rctx`` (the requesting
workload's view of the request), ``req_wl`` (SPIFFE ID of the workload that asked for it; in a
replacement, as the draft says, the list of every requesting workload, the newest last), ``aud``
(the trust domain), ``iat`` and a short ``exp`` (never past the subject token's). A replacement token
(a hop asking for a narrower scope) also carries ``prior`` (ours, not the draft's): the verified hops
before the newest requester.

:func:`grant` is the exchange decision (pure: verified values and a clock in, claims out);
:class:`TxnVerifier` checks a presented token against the mesh key set. The external token never
goes past the member that exchanged it. Messages never quote a token.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeGuard

from agentmesh.errors import ConfigError, DelegationError, PermissionDenied, TokenError
from agentmesh.identity import SpiffeId
from agentmesh.tokens import crypto
from agentmesh.tokens.cache import LRUCache
from agentmesh.tokens.jws import parse_compact
from agentmesh.tokens.verify import TokenVerifier, VerifiedToken, check_principal_token, verify_jws

__all__ = ["TXN_TYP", "Grant", "TxnToken", "TxnVerifier", "check_principal_token", "grant", "narrow", "scope_of",
           "sign_txn_token", "token_hash"]

TXN_TYP = "txntoken+jwt"
_TYPS = frozenset({TXN_TYP})
MAX_CONTEXT_VALUE = 256  # bytes of one rctx value
MAX_CONTEXT_KEYS = 8
MAX_SCOPE = 1024


def token_hash(token: str) -> str:
    """base64url(SHA-256(token)): how links name the transaction token (WIMSE ``tth``) and each other."""
    return crypto.b64url_encode(hashlib.sha256(token.encode("ascii")).digest())


@dataclass(frozen=True, slots=True)
class TxnToken:
    """The verified content of a transaction token."""

    txn: str
    sub: str  # the principal ("<iss>#<sub>" for an external issuer)
    scope: tuple[str, ...]
    roles: tuple[str, ...]  # tctx.roles
    route: str  # tctx.route: where the transaction entered the mesh
    subject_jti: str  # tctx.sjti: revoking the subject token ends the transaction
    req_wl: str  # SPIFFE ID of the workload that requested it (the newest, for a replacement)
    prior: tuple[str, ...]  # verified hops before req_wl (replacement tokens only)
    exp: float
    iat: float
    hash: str  # token_hash of the raw token
    rctx: Mapping[str, str]
    requesters: tuple[str, ...] = ()  # every workload that requested it or a token it replaces, oldest first


@dataclass(frozen=True, slots=True)
class Grant:
    """What the TTS decided to issue (claims without iat/exp bookkeeping)."""

    claims: Mapping[str, Any]
    expires_at: float


def scope_of(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """The scope a token's claims grant: ``scope`` (space-separated, RFC 8693) or ``scp`` (a list)."""
    return _scope_of(claims.get("scope", claims.get("scp")))


def _scope_of(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(s for s in value.split(" ") if s)
    if isinstance(value, list) and all(isinstance(s, str) and s and " " not in s for s in value):
        return tuple(value)
    raise TokenError("token scope claim is invalid")


def _requested(scope: str) -> tuple[str, ...]:
    if len(scope) > MAX_SCOPE or not scope.isascii() or any(c.isspace() and c != " " for c in scope):
        raise ConfigError("requested scope must be space-separated ASCII words (at most 1024 bytes)")
    return tuple(dict.fromkeys(s for s in scope.split(" ") if s))


def _context(rctx: Mapping[str, str]) -> dict[str, str]:
    if len(rctx) > MAX_CONTEXT_KEYS or any(not isinstance(k, str) or not isinstance(v, str) or not k
                                           or len(k) > 64 or len(v.encode()) > MAX_CONTEXT_VALUE
                                           for k, v in rctx.items()):
        raise ConfigError(f"request context: at most {MAX_CONTEXT_KEYS} string values of "
                          f"{MAX_CONTEXT_VALUE} bytes")
    return dict(rctx)


def grant(subject: VerifiedToken, principal: str, *, requester: str, trust_domain: str, scope: str,
          route: str, rctx: Mapping[str, str], now: float, ttl: float) -> Grant:
    """The exchange decision at the edge: a verified external ``subject`` token for a transaction token.

    Refuses agent tokens (:func:`check_principal_token`). The granted scope is the
    subject's (``scope`` / ``scp``), narrowed to ``scope`` when one is asked for; asking for a scope
    the subject does not hold is refused. ``exp`` is ``now + ttl``, never past the subject's.
    """
    check_principal_token(subject)
    held = scope_of(subject.claims)
    asked = _requested(scope)
    missing = [s for s in asked if s not in held]
    if missing:
        raise PermissionDenied(f"requested scope exceeds the subject token's: {' '.join(missing)}")
    granted = asked or held
    expires = min(now + ttl, subject.exp)
    if expires <= now:
        raise TokenError("the subject token expires now")
    claims = {
        "txn": secrets.token_hex(16), "sub": principal, "scope": " ".join(granted),
        "tctx": {"roles": list(subject.roles), "route": route[:256], "sjti": subject.jti},
        "rctx": _context(rctx), "req_wl": requester, "aud": trust_domain,
    }
    return Grant(claims, expires)


def narrow(current: TxnToken, chain: Sequence[str], *, requester: str, trust_domain: str, scope: str,
           now: float, ttl: float) -> Grant:
    """A replacement for ``current`` asked by ``requester``, the member serving a call verified with
    ``chain``: same ``txn``, principal and contexts; a scope that may only narrow; ``prior`` records the
    verified hops so the chain stays whole downstream."""
    asked = _requested(scope)
    wider = [s for s in asked if s not in current.scope]
    if wider:
        raise PermissionDenied(f"a replacement transaction token may only narrow the scope (not held: "
                               f"{' '.join(wider)})")
    expires = min(now + ttl, current.exp)
    if expires <= now:
        raise TokenError("the transaction token expires now")
    claims = {
        "txn": current.txn, "sub": current.sub, "scope": " ".join(asked),
        "tctx": {"roles": list(current.roles), "route": current.route, "sjti": current.subject_jti},
        "rctx": dict(current.rctx), "req_wl": [*current.requesters, requester], "aud": trust_domain,
        "prior": list(chain),
    }
    return Grant(claims, expires)


def sign_txn_token(key: crypto.SigningKey, algorithm: str, kid: str, issuer: str, claims: Mapping[str, Any],
                   *, iat: float, exp: float) -> str:
    """The compact JWS of a :class:`Grant`'s claims, signed with the mesh token key."""
    header = {"alg": algorithm, "kid": kid, "typ": TXN_TYP}
    body = {**claims, "iss": issuer, "iat": int(iat), "exp": int(exp)}
    signing_input = ".".join(crypto.b64url_encode(json.dumps(part, separators=(",", ":")).encode())
                             for part in (header, body))
    return f"{signing_input}.{crypto.b64url_encode(crypto.sign(algorithm, key, signing_input.encode('ascii')))}"


class TxnVerifier:
    """Verifies transaction tokens with the mesh issuer's keys of a :class:`TokenVerifier` (its key set,
    clock, leeway and revoked jtis); good ones are cached by hash until they expire. Expiry and the
    revocation of the subject token are checked on every call."""

    def __init__(self, tokens: TokenVerifier, *, mesh_issuer: str, trust_domain: str,
                 cache_size: int = 10000) -> None:
        self.tokens = tokens
        self.issuers = frozenset({mesh_issuer})
        self.trust_domain = trust_domain
        self._cache: LRUCache[TxnToken] = LRUCache(cache_size)
        self._keys = tokens.keys

    def verify(self, token: str) -> TxnToken:
        now = self.tokens.clock()
        if not isinstance(token, str) or not token or len(token) > self.tokens.max_token_bytes \
                or not token.isascii():
            raise DelegationError("txn-token", "transaction token missing, too large or malformed")
        if self.tokens.keys is not self._keys:  # keys changed: what they verified is not taken for granted
            self._cache.clear()
            self._keys = self.tokens.keys
        digest = hashlib.sha256(token.encode("ascii")).digest()
        txn = self._cache.get(digest)
        if txn is None:
            try:
                txn = self._verify_uncached(token, now)
            except TokenError as e:
                raise DelegationError("txn-token", f"transaction token: {e.message}") from None
            self._cache.put(digest, txn)
        elif now > txn.exp + self.tokens.leeway:
            self._cache.discard(digest)
            raise DelegationError("txn-token", "transaction token: token expired")
        if self.tokens.revoked(txn.subject_jti):
            raise DelegationError("txn-revoked", "transaction token: its subject token was revoked")
        return txn

    def _verify_uncached(self, token: str, now: float) -> TxnToken:
        parsed = parse_compact(token, self.tokens.max_token_bytes)
        # only the control plane's own (asymmetric) key: an HMAC secret is held by every member that verifies it
        verify_jws(parsed, keys=self.tokens.keys, issuers=self.issuers,
                   algorithms=self.tokens.algorithms - crypto.HMAC_ALGORITHMS, accepted_typ=_TYPS, typ_required=True)
        c = parsed.claims
        exp_claim, iat_claim = c.get("exp"), c.get("iat")
        if not _number(exp_claim) or not _number(iat_claim):
            raise TokenError("token exp/iat claims are invalid")
        exp, iat = float(exp_claim), float(iat_claim)
        if now > exp + self.tokens.leeway:
            raise TokenError("token expired")
        if iat > now + self.tokens.leeway:
            raise TokenError("token issued in the future")
        if c.get("aud") != self.trust_domain:
            raise TokenError("token is for another trust domain")
        txn, sub, req_wl = c.get("txn"), c.get("sub"), c.get("req_wl")
        if not (isinstance(txn, str) and 0 < len(txn) <= 128 and isinstance(sub, str) and sub):
            raise TokenError("token has no valid txn/sub claims")
        tctx, rctx = c.get("tctx"), c.get("rctx", {})
        if not isinstance(tctx, dict) or not isinstance(rctx, dict) \
                or not all(isinstance(v, str) for v in rctx.values()):
            raise TokenError("token tctx/rctx claims are invalid")
        roles, route, sjti = tctx.get("roles", []), tctx.get("route", ""), tctx.get("sjti")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles) \
                or not isinstance(route, str) or not isinstance(sjti, str) or not sjti:
            raise TokenError("token tctx claim is invalid")
        prior = c.get("prior", [])
        if not isinstance(prior, list) or not all(isinstance(p, str) for p in prior):
            raise TokenError("token prior claim is invalid")
        requesters = req_wl if isinstance(req_wl, list) and req_wl else [req_wl]
        for wl in (*requesters, *prior):
            self._member(wl)
        return TxnToken(txn=txn, sub=sub, scope=_scope_of(c.get("scope")), roles=tuple(roles), route=route,
                        subject_jti=sjti, req_wl=str(requesters[-1]), prior=tuple(prior), exp=exp,
                        iat=iat, hash=token_hash(token), rctx=MappingProxyType(dict(rctx)),
                        requesters=tuple(str(r) for r in requesters))

    def _member(self, value: object) -> None:
        try:
            sid = SpiffeId.parse(value) if isinstance(value, str) else None
        except ConfigError:
            sid = None
        if sid is None or sid.trust_domain != self.trust_domain or sid.agent_name is None:
            raise TokenError("token names a workload that is not a member of this mesh")


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and -1e13 < value < 1e13
