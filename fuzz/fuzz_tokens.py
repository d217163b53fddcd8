"""Coverage-guided fuzzing of the token parser and verifier (``agentmesh.tokens.jws``, ``verify``).

Any input, read as a token (bytes as Latin-1, so non-ASCII too), must be refused with a
:class:`TokenError` by ``parse_compact`` and by ``TokenVerifier.verify`` (any other exception is a
crash), and nothing but the tokens the seeded authorities issued may verify (a forgery is a crash).

    make fuzz                               # every target, FUZZ_SECONDS each
    .venv/bin/python fuzz/fuzz_tokens.py -max_total_time=60
    .venv/bin/python fuzz/fuzz_tokens.py --replay      # the seeds once, without atheris
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _harness import ROOT, main

ISSUER = "spiffe://fuzz.example"
AUDIENCE = "agentmesh"
NOW = 1_700_000_000.0


@cache
def _world() -> tuple[object, tuple[str, ...]]:
    """A verifier trusting an ES256, an EdDSA and an HS256 key, and one valid token of each."""
    import hashlib
    import hmac

    from agentmesh.tokens import KeySet, TokenAuthority, TokenVerifier, crypto

    es = TokenAuthority(crypto.generate_key("ES256"), "ES256", issuer=ISSUER, clock=lambda: NOW)
    ed = TokenAuthority(crypto.generate_key("EdDSA"), "EdDSA", issuer=ISSUER, clock=lambda: NOW)
    secret = b"fuzz-secret-0123456789abcdef-0123456789"
    keys = KeySet.from_authority(es) | KeySet.from_authority(ed) | KeySet.with_hmac(secret, "hmac", ISSUER)
    verifier = TokenVerifier(keys, audience=AUDIENCE, issuers=[ISSUER], clock=lambda: NOW, cache_size=0)
    claims = {"iss": ISSUER, "sub": "carol", "aud": AUDIENCE, "iat": int(NOW), "exp": int(NOW) + 300,
              "jti": "fuzz-jti-0123456789", "roles": ["client"]}
    signing_input = ".".join(crypto.b64url_encode(json.dumps(o, separators=(",", ":")).encode())
                             for o in ({"alg": "HS256", "kid": "hmac", "typ": "at+jwt"}, claims))
    hs = f"{signing_input}.{crypto.b64url_encode(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"
    tokens = (es.issue(sub="alice", roles=["client"], audience=AUDIENCE, ttl=300),
              ed.issue(sub="bob", roles=["client", "reader"], audience=AUDIENCE, ttl=300), hs)
    return verifier, tokens


def make_target() -> Callable[[bytes], None]:
    from agentmesh.errors import TokenError
    from agentmesh.tokens.jws import parse_compact

    verifier, valid = _world()
    verify = verifier.verify  # type: ignore[attr-defined]

    def one_input(data: bytes) -> None:
        token = data.decode("latin-1")
        try:
            parse_compact(token, 8192)
        except TokenError:
            pass
        try:
            verify(token)
        except TokenError:
            return
        if token not in valid:
            raise AssertionError(f"a token nobody issued verified: {token!r}")

    return one_input


def seeds() -> list[bytes]:
    _, valid = _world()
    out = [t.encode() for t in valid]
    for t in valid:
        h, p, s = t.split(".")
        out += [f"{h}.{p}".encode(), f"{h}.{p}.".encode(), f"{h}..{s}".encode(), f"{p}.{h}.{s}".encode(),
                f"{t}.{s}".encode(), t[:-1].encode()]
    vectors = ROOT / "tests" / "tokens" / "wycheproof" / "json_web_signature_test.json"
    if vectors.exists():
        doc = json.loads(vectors.read_text())
        out += [t["jws"].encode() for g in doc["testGroups"] for t in g["tests"] if isinstance(t["jws"], str)]
    return out


if __name__ == "__main__":
    main("tokens", make_target, seeds)
