"""Live token objects from the frozen :class:`TokensConfig`: the key set and the verifier."""

from __future__ import annotations

import time
from collections.abc import Callable

from agentmesh.clock import Clock
from agentmesh.config import TokensConfig
from agentmesh.errors import ConfigError
from agentmesh.tokens.authority import TokenAuthority
from agentmesh.tokens.jwks import JwksCache
from agentmesh.tokens.keys import KeySet
from agentmesh.tokens.verify import TokenVerifier

__all__ = ["HMAC_KID", "keys_from_config", "verifier_from_config"]

#: The kid of the configured HMAC secret (tokens signed with it must carry this kid).
HMAC_KID = "hmac"


def keys_from_config(cfg: TokensConfig, authority: TokenAuthority | None, *,
                     clock: Clock = time.time) -> tuple[KeySet, tuple[JwksCache, ...]]:
    """The verification keys, and the JWKS URL caches the caller must refresh (``start()``)."""
    parts: list[KeySet] = []
    if authority is not None:
        parts.append(KeySet.from_authority(authority))
    if cfg.hmac_secret_file is not None:
        try:
            secret = cfg.hmac_secret_file.read_bytes().strip()
        except OSError as e:
            raise ConfigError(f"tokens.hmac_secret_file: cannot read {cfg.hmac_secret_file} "
                              f"({e.__class__.__name__})") from None
        parts.append(KeySet.with_hmac(secret, HMAC_KID, cfg.issuer))
    caches: list[JwksCache] = []
    for ext in cfg.issuers:
        if ext.jwks_file is not None:
            parts.append(KeySet.from_file(ext.jwks_file, ext.issuer))
        elif ext.jwks_url is not None:
            cache = JwksCache(ext.jwks_url, ext.issuer, clock=clock)
            caches.append(cache)
            parts.append(cache.keyset)
        else:
            raise ConfigError(f"tokens.issuers: {ext.issuer!r} needs jwks_file or jwks_url")
    return KeySet.merge(*parts), tuple(caches)


def verifier_from_config(cfg: TokensConfig, keys: KeySet, *,
                         revoked: Callable[[str], bool] = lambda jti: False,
                         clock: Clock = time.time) -> TokenVerifier:
    """A verifier accepting the mesh issuer and every configured external issuer."""
    return TokenVerifier(
        keys,
        audience=cfg.audience,
        issuers=[cfg.issuer, *(e.issuer for e in cfg.issuers)],
        algorithms=cfg.algorithms,
        leeway=cfg.leeway,
        max_token_bytes=cfg.max_token_bytes,
        revoked=revoked,
        clock=clock,
        audiences={e.issuer: e.audience for e in cfg.issuers if e.audience},
        roles_claims={e.issuer: e.roles_claim for e in cfg.issuers},
    )
