"""With an HMAC secret configured (``tokens.hmac_secret_file``), every member that verifies holds the key:
what it signs can never be a transaction token or a member's own token, only an external principal's token.
Each forgery is refused next to the same token signed by the control plane's key, which passes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from agentmesh.errors import DelegationError, TokenError
from agentmesh.identity import PeerIdentity, peer_identity_from_cert
from agentmesh.pki import CertificateAuthority
from agentmesh.tokens import KeySet, TokenAuthority, TokenVerifier
from agentmesh.tokens.delegation import Checks, verify_caller
from agentmesh.tokens.links import LinkVerifier
from agentmesh.tokens.txn import TxnVerifier, sign_txn_token
from agentmesh.trust import RevocationPolicy, check_certificate

TD = "example.org"
ISSUER = f"spiffe://{TD}"
NOW = float(int(time.time()))
SECRET = secrets.token_bytes(32)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest())}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[TokenAuthority, TokenVerifier, PeerIdentity, Any]:
    root = tmp_path_factory.mktemp("hmac")
    ca = CertificateAuthority.init(root / "ca", TD, clock=lambda: NOW)  # certificates valid at NOW
    TokenAuthority.init(root / "ca")
    authority = TokenAuthority.load(root / "ca", issuer=ISSUER, clock=lambda: NOW)
    keys = KeySet.merge(KeySet.from_authority(authority), KeySet.with_hmac(SECRET, "hmac", ISSUER))
    verifier = TokenVerifier(keys, audience="agentmesh", issuers=[ISSUER], clock=lambda: NOW)
    issued = ca.issue("c", ttl=86400)
    return authority, verifier, peer_identity_from_cert(issued.cert, TD, NOW), ca


def txn_claims(req_wl: str) -> dict[str, Any]:
    return {"txn": secrets.token_hex(16), "sub": "ceo@example.org", "scope": "payments:write",
            "tctx": {"roles": ["admin"], "route": "x", "sjti": "j"}, "rctx": {}, "req_wl": req_wl, "aud": TD}


def test_a_transaction_token_signed_with_the_shared_secret_is_refused(world: Any) -> None:
    authority, verifier, peer, _ = world
    txns = TxnVerifier(verifier, mesh_issuer=ISSUER, trust_domain=TD)
    claims = txn_claims(peer.uri)
    honest = sign_txn_token(authority.key, authority.algorithm, authority.kid, ISSUER, claims, iat=NOW, exp=NOW + 60)
    assert txns.verify(honest).sub == "ceo@example.org"
    forged = hs256({"alg": "HS256", "kid": "hmac", "typ": "txntoken+jwt"},
                   {**claims, "iss": ISSUER, "iat": int(NOW), "exp": int(NOW) + 60})
    with pytest.raises(DelegationError) as err:
        txns.verify(forged)
    assert err.value.check == "txn-token" and "algorithm not allowed" in err.value.message


def test_a_members_own_token_signed_with_the_shared_secret_is_refused(world: Any) -> None:
    authority, verifier, peer, ca = world
    checks = Checks(verifier, TxnVerifier(verifier, mesh_issuer=ISSUER, trust_domain=TD),
                    LinkVerifier(lambda cert, presented: check_certificate(cert, (ca.cert,), TD, NOW)), ISSUER, 4,
                    RevocationPolicy(failure_mode="open"))
    claims = {"sub": peer.uri, "roles": ["admin"], "aud": "agentmesh", "jti": secrets.token_hex(8),
              "cnf": {"x5t#S256": peer.thumbprint}}
    honest = authority.issue(sub=peer.uri, roles=["admin"], audience="agentmesh", ttl=60,
                             cnf_thumbprint=peer.thumbprint)
    assert verify_caller(peer, honest, None, None, me=f"{ISSUER}/agent/b", checks=checks, snapshot=None,
                         now=NOW).roles == ("admin",)
    forged = hs256({"alg": "HS256", "kid": "hmac", "typ": "at+jwt"},
                   {**claims, "iss": ISSUER, "iat": int(NOW), "exp": int(NOW) + 60})
    with pytest.raises(TokenError, match="shared secret"):
        verify_caller(peer, forged, None, None, me=f"{ISSUER}/agent/b", checks=checks, snapshot=None, now=NOW)


def test_an_external_principals_token_may_still_use_the_shared_secret(world: Any, tmp_path: Path) -> None:
    _, verifier, _, _ = world
    token = hs256({"alg": "HS256", "kid": "hmac", "typ": "at+jwt"},
                  {"iss": ISSUER, "sub": "alice@example.org", "aud": "agentmesh", "jti": "j1", "roles": ["client"],
                   "iat": int(NOW), "exp": int(NOW) + 60})
    assert verifier.verify(token).alg == "HS256"  # what the bridge accepts and the control plane exchanges
