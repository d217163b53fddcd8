"""Machine-made tokens: every mutation of a valid token is refused, unless it is the token itself.

Valid ES256 (bound and unbound), EdDSA and HS256 tokens are mutated character by character, bit by bit
in their decoded segments, claim by claim and header by header (kept with their old signature, or
re-signed with the right key where the change itself must be refused: a required claim gone, a claim of
the wrong type, another alg or kid, a key header), and re-signed with wrong keys. Each mutant must fail
with a :class:`TokenError` (any other exception is a bug too), except a mutant equal to the original.

The default run is small and derandomized (a few hundred examples in all, a few seconds); the ``slow``
variants run many more random examples when ``CI=true`` or ``AGENTMESH_SLOW=1``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import AUDIENCE, ISSUER, Agent
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import settings
from hypothesis import strategies as st
from properties import profiles, run

from agentmesh.clock import FakeClock
from agentmesh.errors import TokenError
from agentmesh.tokens import KeySet, TokenAuthority, TokenVerifier, crypto

PROFILES = profiles(60, 1000)

B64URL = string.ascii_letters + string.digits + "-_"
HMAC_KID = "shared"
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=8), lambda kids: st.lists(kids, max_size=3)
                    | st.dictionaries(st.text(max_size=5), kids, max_size=3), max_leaves=6)


def segment(obj: Any) -> str:
    return crypto.b64url_encode(json.dumps(obj, separators=(",", ":")).encode())


@dataclass(frozen=True)
class Case:
    """One valid token, how to verify it as its holder would, and how to sign like its issuer."""

    name: str
    token: str
    verify: Callable[[str], object]
    sign: Callable[[bytes], bytes]

    @property
    def header(self) -> dict[str, Any]:
        return dict(json.loads(crypto.b64url_decode(self.token.split(".")[0])))

    @property
    def claims(self) -> dict[str, Any]:
        return dict(json.loads(crypto.b64url_decode(self.token.split(".")[1])))

    def signed(self, header: dict[str, Any], claims: dict[str, Any],
               sign: Callable[[bytes], bytes] | None = None) -> str:
        signing_input = f"{segment(header)}.{segment(claims)}"
        return f"{signing_input}.{crypto.b64url_encode((sign or self.sign)(signing_input.encode()))}"

    def check(self, mutant: str) -> None:
        """The mutant verifies if and only if it is the original token."""
        if mutant == self.token:
            self.verify(mutant)
            return
        with pytest.raises(TokenError):
            self.verify(mutant)


@pytest.fixture
def cases(authority: TokenAuthority, clock: FakeClock, agent_a: Agent,
          make_verifier: Callable[..., TokenVerifier]) -> list[Case]:
    eddsa = TokenAuthority(crypto.generate_key("EdDSA"), "EdDSA", issuer=ISSUER, clock=clock)
    secret = os.urandom(32)
    verifier = make_verifier(KeySet.from_authority(authority) | KeySet.from_authority(eddsa)
                             | KeySet.with_hmac(secret, HMAC_KID, ISSUER))

    def as_agent_a(token: str) -> object:
        return verifier.verify(token, peer_thumbprint=agent_a.thumbprint, peer_spiffe_id=agent_a.spiffe_id)

    def hs256(data: bytes) -> bytes:
        return hmac.new(secret, data, hashlib.sha256).digest()

    es, ed = (lambda data: crypto.sign("ES256", authority.key, data)), \
        (lambda data: crypto.sign("EdDSA", eddsa.key, data))
    bound = authority.issue(sub=agent_a.spiffe_id, roles=["ingestor"], audience=AUDIENCE, ttl=300,
                            cnf_thumbprint=agent_a.thumbprint)
    client = authority.issue(sub="alice", roles=["client"], audience=AUDIENCE, ttl=300)
    out = [Case("es256-bound", bound, as_agent_a, es), Case("es256-client", client, verifier.verify, es),
           Case("eddsa-client", eddsa.issue(sub="bob", roles=["client"], audience=AUDIENCE, ttl=300),
                verifier.verify, ed)]
    hs = Case("hs256-client", "", verifier.verify, hs256)
    now = int(clock())
    out.append(Case(hs.name, hs.signed({"alg": "HS256", "kid": HMAC_KID, "typ": "at+jwt"},
                                       {"iss": ISSUER, "sub": "carol", "aud": AUDIENCE, "iat": now, "exp": now + 300,
                                        "jti": "jti-hs256-0123456789", "roles": ["client"]}), verifier.verify, hs256))
    for c in out:
        c.verify(c.token)  # every original verifies
    return out


# ---------------------------------------------------------------------- characters and bits
@pytest.mark.parametrize("profile", PROFILES)
def test_character_mutations_never_verify(cases: list[Case], profile: settings) -> None:
    chars = st.sampled_from(B64URL + ".=+/ \t\\\"") | st.characters(codec="utf-8")

    @st.composite
    def mutants(draw: st.DrawFn) -> tuple[Case, str]:
        case = draw(st.sampled_from(cases))
        t = case.token
        i = draw(st.integers(0, len(t) - 1))
        op = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "swap", "segments"]))
        if op == "replace":
            t = t[:i] + draw(chars) + t[i + 1:]
        elif op == "insert":
            t = t[:i] + draw(st.text(chars, min_size=1, max_size=4)) + t[i:]
        elif op == "delete":
            t = t[:i] + t[i + draw(st.integers(1, 8)):]
        elif op == "truncate":
            t = t[:i]
        elif op == "swap":
            j = draw(st.integers(0, len(t) - 1))
            chars_ = list(t)
            chars_[i], chars_[j] = chars_[j], chars_[i]
            t = "".join(chars_)
        else:
            parts = t.split(".")
            t = ".".join(draw(st.lists(st.sampled_from(parts), min_size=1, max_size=5)))
        return case, t

    run(profile, mutants(), lambda m: m[0].check(m[1]))


@pytest.mark.parametrize("profile", PROFILES)
def test_bit_flips_in_decoded_segments_never_verify(cases: list[Case], profile: settings) -> None:
    @st.composite
    def mutants(draw: st.DrawFn) -> tuple[Case, str]:
        case = draw(st.sampled_from(cases))
        parts = case.token.split(".")
        which = draw(st.integers(0, 2))
        raw = bytearray(crypto.b64url_decode(parts[which]))
        bit = draw(st.integers(0, len(raw) * 8 - 1))
        raw[bit // 8] ^= 1 << (bit % 8)
        parts[which] = crypto.b64url_encode(bytes(raw))
        return case, ".".join(parts)

    run(profile, mutants(), lambda m: m[0].check(m[1]))


def test_non_canonical_base64url_never_verifies(cases: list[Case]) -> None:
    """Setting the unused low bits of a segment's last character re-spells the same bytes: refused."""
    for case in cases:
        parts = case.token.split(".")
        for which, seg in enumerate(parts):
            spare = {2: 4, 3: 2}.get(len(seg) % 4, 0)  # unused bits in the last character
            for low in range(1, 2 ** spare):
                mutant = parts.copy()
                mutant[which] = seg[:-1] + B64URL[B64URL.index(seg[-1]) | low]
                case.check(".".join(mutant))


# ---------------------------------------------------------------------- claims and headers
#: claim -> values of it that must be refused (whatever else is right)
def bad_claim_values(case: Case, now: int) -> dict[str, st.SearchStrategy[Any]]:
    not_number = st.text(max_size=5) | st.booleans() | st.lists(st.integers(), max_size=2) | \
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
    claims = case.claims
    return {
        "iss": JSON.filter(lambda v: v != ISSUER),
        "sub": JSON.filter(lambda v: not isinstance(v, str)) | st.just(""),
        "aud": JSON.filter(lambda v: v != AUDIENCE and not (isinstance(v, list) and AUDIENCE in v
                                                             and all(isinstance(x, str) for x in v))),
        "exp": not_number | st.none() | st.integers(max_value=now - 31) | st.integers(min_value=10 ** 13),
        "nbf": not_number | st.integers(min_value=now + 31),
        "iat": not_number | st.integers(min_value=now + 31),
        "jti": JSON.filter(lambda v: not isinstance(v, str)) | st.just("") | st.just("j" * 257),
        "roles": JSON.filter(lambda v: not (isinstance(v, list) and all(isinstance(x, str) for x in v))),
        "cnf": JSON.filter(lambda v: v != claims.get("cnf")) if "cnf" in claims else
        JSON.filter(lambda v: not isinstance(v, dict) or not isinstance(v.get("x5t#S256"), str)),
    }


@pytest.mark.parametrize("profile", PROFILES)
def test_claim_mutations_never_verify(cases: list[Case], clock: FakeClock, profile: settings) -> None:
    """Claims deleted, changed or added, kept with the old signature; and claim changes that must be
    refused on their own, re-signed with the right key."""
    now = int(clock())
    required = ("iss", "sub", "aud", "exp", "jti")

    @st.composite
    def mutants(draw: st.DrawFn) -> tuple[Case, str]:
        case = draw(st.sampled_from(cases))
        header, claims = case.header, case.claims
        op = draw(st.sampled_from(["delete", "change", "add", "resign-delete", "resign-bad-value"]))
        if op in ("delete", "change"):
            name = draw(st.sampled_from(sorted(claims)))
            if op == "delete":
                del claims[name]
            else:
                claims[name] = draw(JSON)
        elif op == "add":
            claims[draw(st.text(min_size=1, max_size=8))] = draw(JSON)
        else:
            if op == "resign-delete":
                for name in draw(st.lists(st.sampled_from(required + (("cnf",) if "cnf" in claims else ())),
                                          min_size=1, unique=True)):
                    del claims[name]
            else:
                name, values = draw(st.sampled_from(sorted(bad_claim_values(case, now).items())))
                claims[name] = draw(values)
            return case, case.signed(header, claims)
        parts = case.token.split(".")
        return case, f"{parts[0]}.{segment(claims)}.{parts[2]}"

    run(profile, mutants(), lambda m: m[0].check(m[1]))


@pytest.mark.parametrize("profile", PROFILES)
def test_header_mutations_never_verify(cases: list[Case], profile: settings) -> None:
    """Another alg, kid or typ, a key header, crit or zip, a header member gone: refused, whether the
    token keeps its signature or is re-signed with the right key."""
    algs = sorted({*crypto.ASYMMETRIC_ALGORITHMS, *crypto.HMAC_ALGORITHMS, "none", "None", "NONE", "es256", ""})
    accepted_typ = {"at+jwt", "application/at+jwt", "jwt"}

    @st.composite
    def mutants(draw: st.DrawFn) -> tuple[Case, str]:
        case = draw(st.sampled_from(cases))
        header, claims = case.header, case.claims
        change = draw(st.sampled_from(["alg", "kid", "typ", "key-header", "crit", "zip", "delete"]))
        if change == "alg":
            header["alg"] = draw(st.sampled_from(algs).filter(lambda a: a != header["alg"]) | JSON.filter(
                lambda v: not isinstance(v, str)))
        elif change == "kid":
            header["kid"] = draw(JSON.filter(lambda v: v != header["kid"]))
        elif change == "typ":
            header["typ"] = draw(JSON.filter(lambda v: v is not None  # a null typ counts as none: accepted
                                             and not (isinstance(v, str) and v.lower() in accepted_typ)))
        elif change == "key-header":
            header[draw(st.sampled_from(["jku", "x5u", "jwk", "x5c"]))] = draw(JSON)
        elif change in ("crit", "zip"):
            header[change] = draw(JSON)
        else:
            del header[draw(st.sampled_from(["alg", "kid"]))]
        if draw(st.booleans()):
            return case, case.signed(header, claims)
        parts = case.token.split(".")
        return case, f"{segment(header)}.{parts[1]}.{parts[2]}"

    run(profile, mutants(), lambda m: m[0].check(m[1]))


# ---------------------------------------------------------------------- wrong keys
@pytest.fixture(scope="module")
def wrong_signers() -> dict[str, Callable[[bytes], bytes]]:
    """Signers with keys nobody configured, one per algorithm family."""
    es256, es384 = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP384R1())
    ed = crypto.generate_key("EdDSA")
    secret = os.urandom(32)
    return {
        "ES256": lambda d: crypto.sign("ES256", es256, d),
        "ES384": lambda d: crypto.sign("ES384", es384, d),
        "EdDSA": lambda d: crypto.sign("EdDSA", ed, d),
        "HS256": lambda d: hmac.new(secret, d, hashlib.sha256).digest(),
    }


@pytest.mark.parametrize("profile", PROFILES)
def test_tokens_signed_with_a_wrong_key_never_verify(cases: list[Case], authority: TokenAuthority,
                                                     wrong_signers: dict[str, Callable[[bytes], bytes]],
                                                     profile: settings) -> None:
    """Any header and claims, signed by a key we do not trust, or HMAC-signed with our public key."""
    public_pem = authority.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    public_der = authority.key.public_key().public_bytes(serialization.Encoding.DER,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    def hs256_with(key: bytes) -> Callable[[bytes], bytes]:
        return lambda d: hmac.new(key, d, hashlib.sha256).digest()

    signers = {**wrong_signers, "hs256-with-public-pem": hs256_with(public_pem),
               "hs256-with-public-der": hs256_with(public_der), "hs256-with-kid": hs256_with(authority.kid.encode())}

    @st.composite
    def mutants(draw: st.DrawFn) -> tuple[Case, str]:
        case = draw(st.sampled_from(cases))
        name = draw(st.sampled_from(sorted(signers)))
        header = case.header
        if draw(st.booleans()):
            header["alg"] = name[:5].upper() if name.startswith("hs256") else name
        return case, case.signed(header, case.claims, signers[name])

    run(profile, mutants(), lambda m: m[0].check(m[1]))
