"""Mesh access tokens: issuing (beside the CA), key sets, sans-IO verification, revocation.

Messages of every error raised here never contain a token or a key.
"""

from agentmesh.tokens.authority import KEY_FILE, TokenAuthority, default_issuer
from agentmesh.tokens.build import HMAC_KID, keys_from_config, verifier_from_config
from agentmesh.tokens.jwks import JwksCache
from agentmesh.tokens.keys import KeySet, KeySource, VerificationKey
from agentmesh.tokens.revocation import REVOKED_FILE, RevocationStore, RevokedSet
from agentmesh.tokens.verify import TokenVerifier, VerifiedToken

__all__ = [
    "HMAC_KID",
    "KEY_FILE",
    "REVOKED_FILE",
    "JwksCache",
    "KeySet",
    "KeySource",
    "RevocationStore",
    "RevokedSet",
    "TokenAuthority",
    "TokenVerifier",
    "VerificationKey",
    "VerifiedToken",
    "default_issuer",
    "keys_from_config",
    "verifier_from_config",
]
