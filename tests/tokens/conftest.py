"""Fixtures for the token tests: a real CA, a token authority, two agent certificates, a forger."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentmesh.clock import FakeClock
from agentmesh.identity import cert_thumbprint
from agentmesh.pki.ca import CertificateAuthority
from agentmesh.tokens import KeySet, TokenAuthority, TokenVerifier

TRUST_DOMAIN = "example.org"
ISSUER = f"spiffe://{TRUST_DOMAIN}"
AUDIENCE = "agentmesh"


@dataclass(frozen=True)
class Agent:
    spiffe_id: str
    thumbprint: str


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


Forge = Callable[..., str]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ca(tmp_path: Path, clock: FakeClock) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca", TRUST_DOMAIN, clock=clock)


@pytest.fixture
def ca_dir(ca: CertificateAuthority) -> Path:
    return ca.dir


@pytest.fixture
def authority(ca_dir: Path, clock: FakeClock) -> TokenAuthority:
    TokenAuthority.init(ca_dir)
    return TokenAuthority.load(ca_dir, issuer=ISSUER, clock=clock)


@pytest.fixture
def agent_a(ca: CertificateAuthority) -> Agent:
    issued = ca.issue("agent-a")
    return Agent(str(issued.spiffe_id), cert_thumbprint(issued.cert))


@pytest.fixture
def agent_b(ca: CertificateAuthority) -> Agent:
    issued = ca.issue("agent-b")
    return Agent(str(issued.spiffe_id), cert_thumbprint(issued.cert))


@pytest.fixture
def make_verifier(authority: TokenAuthority, clock: FakeClock) -> Callable[..., TokenVerifier]:
    def make(keys: KeySet | None = None, **kw: Any) -> TokenVerifier:
        kw.setdefault("audience", AUDIENCE)
        kw.setdefault("issuers", {ISSUER})
        kw.setdefault("clock", clock)
        return TokenVerifier(keys if keys is not None else KeySet.from_authority(authority), **kw)
    return make


@pytest.fixture
def verifier(make_verifier: Callable[..., TokenVerifier]) -> TokenVerifier:
    return make_verifier()


@pytest.fixture
def claims(authority: TokenAuthority, clock: FakeClock) -> dict[str, Any]:
    """Valid claims for a client (unbound, non-SPIFFE) token."""
    now = int(clock())
    return {"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 300,
            "jti": "jti-1234567890abcdef", "roles": ["client"]}


@pytest.fixture
def forge(authority: TokenAuthority) -> Forge:
    """Builds a token from raw parts; signs with the authority key unless told otherwise."""
    def make(header: dict[str, Any] | str | None = None, payload: dict[str, Any] | str | None = None, *,
             sign: Callable[[bytes], bytes] | None = None, alg: str | None = None) -> str:
        if header is None:
            header = {"alg": authority.algorithm, "kid": authority.kid, "typ": "at+jwt"}
        h = b64(header if isinstance(header, str) else json.dumps(header))
        p = b64(payload if isinstance(payload, str) else json.dumps(payload))
        signing_input = f"{h}.{p}".encode()
        if sign is None:
            from agentmesh.tokens import crypto
            sig = crypto.sign(alg or authority.algorithm, authority.key, signing_input)
        else:
            sig = sign(signing_input)
        return f"{h}.{p}.{b64(sig)}"
    return make
