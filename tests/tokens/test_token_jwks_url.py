"""An external issuer's JWKS served by a real local HTTP server on port 0."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import Forge
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentmesh.clock import FakeClock
from agentmesh.errors import ConfigError, TokenError, Unavailable
from agentmesh.tokens import JwksCache, KeySet, TokenAuthority, TokenVerifier
from agentmesh.tokens.crypto import public_jwk

IDP = "https://idp.example.com"


class _Server:
    def __init__(self) -> None:
        self.doc: Any = {"keys": []}
        self.status = 200
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits += 1
                body = json.dumps(server.doc).encode()
                self.send_response(server.status)
                if server.status in (301, 302):
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    t = threading.Thread(target=s.httpd.serve_forever, daemon=True)
    t.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _jwks(*keys: tuple[str, ed25519.Ed25519PrivateKey]) -> dict[str, Any]:
    return {"keys": [{**public_jwk(k), "kid": kid, "use": "sig"} for kid, k in keys]}


def test_external_issuer_via_jwks_url(server: _Server, forge: Forge, claims: dict[str, Any],
                                      authority: TokenAuthority, clock: FakeClock,
                                      make_verifier: Callable[..., TokenVerifier]) -> None:
    k1, k2 = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    server.doc = _jwks(("k1", k1))
    cache = JwksCache(server.url, IDP, ttl=300, timeout=2, clock=clock)
    v = make_verifier(KeySet.from_authority(authority) | cache.keyset, issuers={"spiffe://example.org", IDP})
    claims.update(iss=IDP, sub="dave")
    t1 = forge({"alg": "EdDSA", "kid": "k1"}, claims, sign=k1.sign)
    with pytest.raises(TokenError, match="kid unknown"):  # nothing fetched yet, and verify never fetches
        v.verify(t1)
    assert server.hits == 0
    assert cache.refresh_if_stale() and cache.refresh() == 1
    assert v.verify(t1).sub == "dave"
    # rotation: the new key appears only after the TTL, off the hot path
    server.doc = _jwks(("k2", k2))
    t2 = forge({"alg": "EdDSA", "kid": "k2"}, {**claims, "jti": "j2"}, sign=k2.sign)
    assert not cache.refresh_if_stale()
    with pytest.raises(TokenError, match="kid unknown"):
        v.verify(t2)
    clock.advance(301)
    assert cache.refresh_if_stale()
    assert v.verify(t2).jti == "j2"
    assert server.hits == 3


def test_failed_fetch_keeps_last_good_keys(server: _Server, clock: FakeClock) -> None:
    k1 = ed25519.Ed25519PrivateKey.generate()
    server.doc = _jwks(("k1", k1))
    cache = JwksCache(server.url, IDP, timeout=2, clock=clock)
    cache.refresh()
    server.status = 500
    with pytest.raises(Unavailable, match="500"):
        cache.refresh()
    server.status = 302
    with pytest.raises(Unavailable, match="302"):
        cache.refresh()
    server.status = 200
    server.doc = {"keys": "nope"}
    with pytest.raises(ConfigError, match="no 'keys' list"):
        cache.refresh()
    assert cache.get(IDP, "k1") is not None
    assert cache.get("https://other", "k1") is None


def test_oversized_jwks_refused(server: _Server) -> None:
    server.doc = {"keys": [], "pad": "x" * 5000}
    with pytest.raises(ConfigError, match="larger than"):
        JwksCache(server.url, IDP, max_bytes=1000).refresh()


def test_unreachable_url_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        JwksCache("http://127.0.0.1:1/jwks.json", IDP, timeout=1).refresh()


@pytest.mark.parametrize("url", ["http://idp.example.com/jwks", "file:///etc/passwd", "ftp://x/y", "https://"])
def test_only_https_or_loopback_http(url: str) -> None:
    with pytest.raises(ConfigError):
        JwksCache(url, IDP)


def test_background_refresh_thread(server: _Server, clock: FakeClock) -> None:
    server.doc = _jwks(("k1", ed25519.Ed25519PrivateKey.generate()))
    cache = JwksCache(server.url, IDP, timeout=2, clock=clock)
    fetched = threading.Event()
    original = cache.refresh

    def refresh() -> int:
        n = original()
        fetched.set()
        return n

    cache.refresh = refresh  # type: ignore[method-assign]
    cache.start(interval=0.05)
    try:
        assert fetched.wait(5)
        assert cache.get(IDP, "k1") is not None
    finally:
        cache.stop()
