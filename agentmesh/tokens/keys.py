"""The verification keys, looked up only by ``(issuer, kid)`` among keys configured here."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agentmesh.errors import ConfigError
from agentmesh.tokens import crypto

if TYPE_CHECKING:
    from agentmesh.tokens.authority import TokenAuthority

__all__ = ["KeySet", "KeySource", "VerificationKey"]


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One key: it verifies exactly one algorithm, for exactly one issuer."""

    issuer: str
    kid: str
    alg: str
    key: Any  # a prepared pyjwt key: a cryptography public key, or bytes for HMAC

    @property
    def is_hmac(self) -> bool:
        return self.alg in crypto.HMAC_ALGORITHMS


class KeySource(Protocol):
    """Something that can answer a key lookup without I/O (a :class:`JwksCache`, for example)."""

    def get(self, issuer: str, kid: str) -> VerificationKey | None: ...


class KeySet:
    """Immutable verification keys, plus live sources (JWKS URL caches) consulted by issuer."""

    __slots__ = ("_keys", "_sources")

    def __init__(self, keys: Iterable[VerificationKey] = (),
                 sources: Mapping[str, KeySource] | None = None) -> None:
        table: dict[tuple[str, str], VerificationKey] = {}
        for k in keys:
            if (k.issuer, k.kid) in table:
                raise ConfigError(f"duplicate token key id {k.kid!r} for issuer {k.issuer!r}")
            table[(k.issuer, k.kid)] = k
        self._keys = table
        self._sources = dict(sources or {})

    def get(self, issuer: str, kid: str) -> VerificationKey | None:
        """The key for ``(issuer, kid)``, or None. Never fetches anything."""
        key = self._keys.get((issuer, kid))
        if key is None:
            source = self._sources.get(issuer)
            if source is not None:
                key = source.get(issuer, kid)
        return key

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[VerificationKey]:
        return iter(self._keys.values())

    @property
    def issuers(self) -> frozenset[str]:
        return frozenset(i for i, _ in self._keys) | frozenset(self._sources)

    @property
    def hmac_algorithms(self) -> frozenset[str]:
        return frozenset(k.alg for k in self._keys.values() if k.is_hmac)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def merge(cls, *parts: KeySet) -> KeySet:
        """One set from several; a duplicate ``(issuer, kid)`` is a ConfigError."""
        keys = [k for p in parts for k in p._keys.values()]
        sources: dict[str, KeySource] = {}
        for p in parts:
            for iss, src in p._sources.items():
                if iss in sources:
                    raise ConfigError(f"two JWKS sources for issuer {iss!r}")
                sources[iss] = src
        return cls(keys, sources)

    def __or__(self, other: KeySet) -> KeySet:
        return KeySet.merge(self, other)

    @classmethod
    def from_jwks(cls, doc: Mapping[str, Any], issuer: str) -> KeySet:
        """The signing keys of a JWKS document, all trusted for ``issuer`` only."""
        return cls(parse_jwks(doc, issuer))

    @classmethod
    def from_file(cls, path: str | Path, issuer: str) -> KeySet:
        p = Path(path)
        try:
            doc = json.loads(p.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read the JWKS file {p} ({e.__class__.__name__})") from None
        except ValueError:
            raise ConfigError(f"the JWKS file {p} is not valid JSON") from None
        if not isinstance(doc, Mapping):
            raise ConfigError(f"the JWKS file {p} is not a JSON object")
        return cls.from_jwks(doc, issuer)

    @classmethod
    def from_authority(cls, authority: TokenAuthority) -> KeySet:
        """The mesh's own token key, for the authority's issuer."""
        return cls.from_jwks(authority.jwks(), authority.issuer)

    @classmethod
    def with_hmac(cls, secret: bytes, kid: str, issuer: str, *, alg: str = "HS256") -> KeySet:
        """A shared-secret key (>= 32 bytes). HMAC tokens verify only against such a key."""
        if alg not in crypto.HMAC_ALGORITHMS:
            raise ConfigError(f"HMAC algorithm must be one of {sorted(crypto.HMAC_ALGORITHMS)}, got {alg!r}")
        if not kid:
            raise ConfigError("an HMAC token key needs a key id (kid)")
        return cls([VerificationKey(issuer, kid, alg, crypto.prepare_hmac_key(secret))])

    @classmethod
    def from_source(cls, issuer: str, source: KeySource) -> KeySet:
        """A set that asks ``source`` (e.g. a JwksCache) for the keys of ``issuer``."""
        return cls((), {issuer: source})


def parse_jwks(doc: Mapping[str, Any], issuer: str) -> list[VerificationKey]:
    """The usable signing keys of a JWKS; keys for encryption (``use``, ``key_ops``) or without kid are skipped."""
    raw = doc.get("keys")
    if not isinstance(raw, list):
        raise ConfigError(f"the JWKS for issuer {issuer!r} has no 'keys' list")
    out: list[VerificationKey] = []
    for i, jwk in enumerate(raw):
        if not isinstance(jwk, Mapping):
            raise ConfigError(f"JWKS key #{i} for issuer {issuer!r} is not an object")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid or jwk.get("use", "sig") != "sig":
            continue
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            continue  # RFC 7517 section 4.3: a key whose operations do not include verify is not for us
        try:
            key, alg = crypto.key_from_jwk(jwk)
        except ConfigError as e:
            raise ConfigError(f"JWKS key {kid!r} for issuer {issuer!r}: {e.message}") from None
        out.append(VerificationKey(issuer, kid, alg, key))
    if not out:
        raise ConfigError(f"the JWKS for issuer {issuer!r} has no usable signing keys (with kid)")
    return out
