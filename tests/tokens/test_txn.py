"""Transaction tokens (``txntoken+jwt``): the exchange decision at the edge (:func:`grant`), replacement tokens
(:func:`narrow`) and :class:`TxnVerifier`, with real mesh and external token keys and an injected clock.

Every refusal is paired with the honest token it was derived from, which verifies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agentmesh.clock import FakeClock
from agentmesh.errors import ConfigError, DelegationError, PermissionDenied, TokenError
from agentmesh.identity import cert_thumbprint
from agentmesh.pki import CertificateAuthority
from agentmesh.tokens import KeySet, TokenAuthority, TokenVerifier, VerifiedToken, crypto
from agentmesh.tokens.delegation import principal_of
from agentmesh.tokens.txn import (
    TXN_TYP,
    TxnToken,
    TxnVerifier,
    grant,
    narrow,
    scope_of,
    sign_txn_token,
    token_hash,
)

TD = "example.org"
ISSUER = f"spiffe://{TD}"
EXTERNAL = "https://idp.example.com"
AUDIENCE = "agentmesh"
NOW = 1_700_000_000.0
LEEWAY = 30.0
TTL = 300.0
ROUTE = "/agentmesh.v1.Agent/Invoke"


def sid(name: str, td: str = TD) -> str:
    return f"spiffe://{td}/agent/{name}"


A, B, C = sid("a"), sid("b"), sid("c")


@dataclass(frozen=True)
class Keys:
    """Real keys, made once: the mesh token key (beside a real CA), an external IdP's, an attacker's."""

    ca: CertificateAuthority
    mesh: tuple[crypto.SigningKey, str]
    external: tuple[crypto.SigningKey, str]
    rogue: tuple[crypto.SigningKey, str]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    root: Path = tmp_path_factory.mktemp("txn")
    ca = CertificateAuthority.init(root / "ca", TD, clock=lambda: NOW)
    TokenAuthority.init(ca.dir)
    mesh = TokenAuthority.load(ca.dir, issuer=ISSUER)
    return Keys(ca, (mesh.key, mesh.algorithm), (crypto.generate_key("ES256"), "ES256"),
                (crypto.generate_key("ES256"), "ES256"))


@dataclass
class Env:
    clock: FakeClock
    ca: CertificateAuthority
    mesh: TokenAuthority
    external: TokenAuthority
    rogue: TokenAuthority  # another key that claims the mesh issuer
    revoked: set[str]
    tokens: TokenVerifier  # the mesh's and the external issuer's tokens, as at the edge
    txns: TxnVerifier
    base: dict[str, Any] = field(default_factory=dict)  # the claims of the honest transaction token

    def subject(self, *, sub: str = "alice", roles: tuple[str, ...] = ("client",), ttl: float = 600,
                by: TokenAuthority | None = None, cnf: str | None = None, **extra: Any) -> VerifiedToken:
        """A real subject token, verified as the control plane verifies it before an exchange."""
        raw = (by or self.mesh).issue(sub=sub, roles=roles, audience=AUDIENCE, ttl=ttl, cnf_thumbprint=cnf,
                                      extra=extra)
        return self.tokens.verify(raw, peer_thumbprint=cnf, peer_spiffe_id=sub if cnf else None)


@pytest.fixture
def env(keys: Keys) -> Env:
    clock = FakeClock(NOW)
    mesh = TokenAuthority(*keys.mesh, issuer=ISSUER, clock=clock)
    external = TokenAuthority(*keys.external, issuer=EXTERNAL, clock=clock)
    rogue = TokenAuthority(*keys.rogue, issuer=ISSUER, clock=clock)
    revoked: set[str] = set()
    tokens = TokenVerifier(KeySet.from_authority(mesh) | KeySet.from_authority(external), audience=AUDIENCE,
                           issuers={ISSUER, EXTERNAL}, leeway=LEEWAY, revoked=revoked.__contains__, clock=clock)
    e = Env(clock, keys.ca, mesh, external, rogue, revoked, tokens, TxnVerifier(tokens, mesh_issuer=ISSUER,
                                                                                 trust_domain=TD))
    subject = e.subject(scope="read write")
    e.base = {**grant(subject, "alice", requester=A, trust_domain=TD, scope="", route=ROUTE,
                      rctx={"ip": "198.51.100.7"}, now=NOW, ttl=TTL).claims,
              "iss": ISSUER, "iat": int(NOW), "exp": int(NOW + TTL)}
    return e


def claims_of(env: Env, **changes: Any) -> dict[str, Any]:
    """The claims of the honest transaction token (alice, requested by member a), changed (``...`` removes one)."""
    c = {**env.base, **changes}
    return {k: v for k, v in c.items() if v is not ...}


def mint(env: Env, *, header: dict[str, Any] | None = None, by: TokenAuthority | None = None,
         alg: str | None = None, **changes: Any) -> str:
    """A transaction token from raw parts, signed for real (by the mesh key unless ``by``)."""
    signer = by or env.mesh
    h = {"alg": signer.algorithm, "kid": signer.kid, "typ": TXN_TYP, **(header or {})}
    h = {k: v for k, v in h.items() if v is not ...}
    body = claims_of(env, **changes)
    signing_input = ".".join(crypto.b64url_encode(json.dumps(p, separators=(",", ":")).encode()) for p in (h, body))
    sig = crypto.sign(alg or signer.algorithm, signer.key, signing_input.encode())
    return f"{signing_input}.{crypto.b64url_encode(sig)}"


def honest(env: Env) -> str:
    """An honest token, the way the control plane signs one."""
    c = claims_of(env)
    return sign_txn_token(env.mesh.key, env.mesh.algorithm, env.mesh.kid, ISSUER,
                          {k: v for k, v in c.items() if k not in ("iss", "iat", "exp")}, iat=NOW, exp=NOW + TTL)


# ================================================================================================ grant

def test_grant_claims_and_round_trip(env: Env) -> None:
    subject = env.subject(scope="read write", roles=("client", "ops"))
    g = grant(subject, "alice", requester=A, trust_domain=TD, scope="read", route="/r" * 200,
              rctx={"ip": "198.51.100.7"}, now=NOW, ttl=TTL)
    c = g.claims
    assert (c["sub"], c["scope"], c["req_wl"], c["aud"]) == ("alice", "read", A, TD)
    assert c["tctx"] == {"roles": ["client", "ops"], "route": ("/r" * 200)[:256], "sjti": subject.jti}
    assert c["rctx"] == {"ip": "198.51.100.7"} and "prior" not in c
    assert len(c["txn"]) == 32 and c["txn"] != grant(subject, "alice", requester=A, trust_domain=TD, scope="",
                                                       route="", rctx={}, now=NOW, ttl=TTL).claims["txn"]
    assert g.expires_at == NOW + TTL
    raw = sign_txn_token(env.mesh.key, env.mesh.algorithm, env.mesh.kid, ISSUER, c, iat=NOW, exp=g.expires_at)
    txn = env.txns.verify(raw)
    assert (txn.txn, txn.sub, txn.scope, txn.roles, txn.req_wl) == (c["txn"], "alice", ("read",), ("client", "ops"),
                                                                    A)
    assert (txn.subject_jti, txn.prior, txn.exp, txn.iat, txn.hash) == (subject.jti, (), NOW + TTL, NOW,
                                                                        token_hash(raw))
    assert dict(txn.rctx) == {"ip": "198.51.100.7"} and txn.route == ("/r" * 200)[:256]


def _agent(env: Env) -> VerifiedToken:
    a = env.ca.issue("a")
    return env.subject(sub=A, roles=("ingestor",), cnf=cert_thumbprint(a.cert))


def _bound_client(env: Env) -> VerifiedToken:
    return env.subject(cnf=cert_thumbprint(env.ca.issue("a").cert))


@pytest.mark.parametrize(("subject", "refused"), [
    pytest.param(lambda e: e.subject(), False, id="external principal's token: exchanged"),
    pytest.param(lambda e: e.subject(by=e.external, sub="bob"), False, id="external issuer's token: exchanged"),
    pytest.param(_agent, True, id="agent token (spiffe sub, cnf-bound)"),
    pytest.param(_bound_client, True, id="certificate-bound token of a non-spiffe subject"),
    pytest.param(lambda e: e.subject(sub="SPIFFE://example.org/agent/a"), True, id="upper-case SPIFFE subject"),
    pytest.param(lambda e: e.subject(sub=" spiffe://example.org/agent/a"), True, id="SPIFFE subject with a space"),
    pytest.param(lambda e: e.subject(sub="spiffe:x"), True, id="any spiffe: subject"),
])
def test_grant_refuses_agent_tokens(env: Env, subject: Callable[[Env], VerifiedToken], refused: bool) -> None:
    token = subject(env)
    kw: dict[str, Any] = {"requester": A, "trust_domain": TD, "scope": "", "route": ROUTE, "rctx": {}, "now": NOW,
                          "ttl": TTL}
    if refused:
        with pytest.raises(TokenError, match="agent token"):
            grant(token, principal_of(token, ISSUER), **kw)
    else:
        assert grant(token, principal_of(token, ISSUER), **kw).claims["sub"] == principal_of(token, ISSUER)


@pytest.mark.parametrize(("held", "asked", "granted"), [
    pytest.param({"scope": "read write"}, "", ("read", "write"), id="nothing asked: the subject's scope"),
    pytest.param({"scope": "read write"}, "read", ("read",), id="narrowed"),
    pytest.param({"scope": "read write"}, "write read", ("write", "read"), id="same scope, other order"),
    pytest.param({"scope": "read write"}, "read  read ", ("read",), id="duplicates and spaces folded"),
    pytest.param({"scp": ["read", "write"]}, "write", ("write",), id="scp list claim"),
    pytest.param({}, "", (), id="no scope held, none asked"),
    pytest.param({"scope": "read write"}, "read admin", PermissionDenied, id="widened: refused"),
    pytest.param({"scope": "read"}, "Read", PermissionDenied, id="scopes are case-sensitive"),
    pytest.param({}, "read", PermissionDenied, id="no scope held, some asked: refused"),
    pytest.param({"scope": "read write"}, "read\twrite", ConfigError, id="tab in the asked scope"),
    pytest.param({"scope": "read write"}, "read\nwrite", ConfigError, id="newline in the asked scope"),
    pytest.param({"scope": "read write"}, "lé", ConfigError, id="non-ASCII asked scope"),
    pytest.param({"scope": "read write"}, "r" * 1025, ConfigError, id="asked scope over 1024 bytes"),
])
def test_grant_scope_only_narrows(env: Env, held: dict[str, Any], asked: str,
                                  granted: tuple[str, ...] | type[Exception]) -> None:
    subject = env.subject(**held)
    kw: dict[str, Any] = {"requester": A, "trust_domain": TD, "route": ROUTE, "rctx": {}, "now": NOW, "ttl": TTL}
    if isinstance(granted, type):
        with pytest.raises(granted):
            grant(subject, "alice", scope=asked, **kw)
    else:
        g = grant(subject, "alice", scope=asked, **kw)
        assert scope_of(g.claims) == granted


@pytest.mark.parametrize(("subject_ttl", "txn_ttl", "expires"), [
    pytest.param(600, 300, NOW + 300, id="txn_ttl shorter: txn_ttl"),
    pytest.param(100, 300, NOW + 100, id="subject expires first: capped at its exp"),
    pytest.param(300, 300, NOW + 300, id="equal"),
])
def test_grant_exp_capped_by_subject(env: Env, subject_ttl: float, txn_ttl: float, expires: float) -> None:
    g = grant(env.subject(ttl=subject_ttl), "alice", requester=A, trust_domain=TD, scope="", route="", rctx={},
              now=NOW, ttl=txn_ttl)
    assert g.expires_at == expires


def test_grant_refuses_a_subject_expiring_now(env: Env) -> None:
    raw = env.mesh.issue(sub="alice", roles=["client"], audience=AUDIENCE, ttl=10)
    env.clock.advance(20)
    subject = env.tokens.verify(raw)  # past its exp, still accepted within the verifier's leeway...
    with pytest.raises(TokenError, match="expires now"):  # ...but a transaction can never outlive it
        grant(subject, "alice", requester=A, trust_domain=TD, scope="", route="", rctx={}, now=env.clock(), ttl=TTL)
    assert grant(subject, "alice", requester=A, trust_domain=TD, scope="", route="", rctx={}, now=NOW,
                 ttl=TTL).expires_at == NOW + 10


def test_grant_passes_the_external_principal_through(env: Env) -> None:
    mesh_alice = env.subject(sub="alice")
    idp_alice = env.subject(sub="alice", by=env.external, scp=["read"])
    kw: dict[str, Any] = {"requester": A, "trust_domain": TD, "scope": "", "route": "", "rctx": {}, "now": NOW,
                          "ttl": TTL}
    assert grant(mesh_alice, principal_of(mesh_alice, ISSUER), **kw).claims["sub"] == "alice"
    g = grant(idp_alice, principal_of(idp_alice, ISSUER), **kw)
    assert g.claims["sub"] == f"{EXTERNAL}#alice"  # another issuer never takes the name of a mesh principal
    assert g.claims["scope"] == "read"
    txn = env.txns.verify(sign_txn_token(env.mesh.key, env.mesh.algorithm, env.mesh.kid, ISSUER, g.claims, iat=NOW,
                                         exp=g.expires_at))
    assert txn.sub == f"{EXTERNAL}#alice"


@pytest.mark.parametrize(("rctx", "ok"), [
    pytest.param({}, True, id="empty"),
    pytest.param({f"k{i}": "v" for i in range(8)}, True, id="8 keys"),
    pytest.param({f"k{i}": "v" for i in range(9)}, False, id="9 keys"),
    pytest.param({"k": "v" * 256}, True, id="256-byte value"),
    pytest.param({"k": "v" * 257}, False, id="257-byte value"),
    pytest.param({"k": "é" * 129}, False, id="258 UTF-8 bytes in 129 characters"),
    pytest.param({"k" * 64: "v"}, True, id="64-character key"),
    pytest.param({"k" * 65: "v"}, False, id="65-character key"),
    pytest.param({"": "v"}, False, id="empty key"),
    pytest.param({"k": 1}, False, id="non-string value"),
])
def test_grant_request_context_limits(env: Env, rctx: dict[str, Any], ok: bool) -> None:
    kw: dict[str, Any] = {"requester": A, "trust_domain": TD, "scope": "", "route": "", "now": NOW, "ttl": TTL}
    if ok:
        assert grant(env.subject(), "alice", rctx=rctx, **kw).claims["rctx"] == rctx
    else:
        with pytest.raises(ConfigError, match="request context"):
            grant(env.subject(), "alice", rctx=rctx, **kw)


# ================================================================================================ narrow

@pytest.fixture
def current(env: Env) -> TxnToken:
    return env.txns.verify(honest(env))  # scope "read write", requested by a, for alice


@pytest.mark.parametrize(("asked", "scope"), [
    pytest.param("read", ("read",), id="narrower"),
    pytest.param("read write", ("read", "write"), id="same"),
    pytest.param("", (), id="empty: no scope at all (not the current one)"),
    pytest.param("read admin", PermissionDenied, id="wider: refused"),
    pytest.param("admin", PermissionDenied, id="disjoint: refused"),
    pytest.param("read\twrite", ConfigError, id="malformed"),
])
def test_narrow_only_narrows(env: Env, current: TxnToken, asked: str, scope: tuple[str, ...] | type[Exception]) -> None:
    kw: dict[str, Any] = {"requester": B, "trust_domain": TD, "now": NOW + 10, "ttl": TTL}
    if isinstance(scope, type):
        with pytest.raises(scope):
            narrow(current, (A,), scope=asked, **kw)
        return
    g = narrow(current, (A,), scope=asked, **kw)
    c = g.claims
    assert scope_of(c) == scope
    # the same transaction, principal and contexts; the requester is the narrowing member; prior = its chain
    # req_wl: every requesting workload, the newest last (the draft's replacement rule)
    assert (c["txn"], c["sub"], c["req_wl"], c["aud"], c["prior"]) == (current.txn, "alice", [A, B], TD, [A])
    assert c["tctx"] == {"roles": list(current.roles), "route": current.route, "sjti": current.subject_jti}
    assert c["rctx"] == dict(current.rctx)
    assert g.expires_at == current.exp  # never past the token it replaces
    replacement = env.txns.verify(sign_txn_token(env.mesh.key, env.mesh.algorithm, env.mesh.kid, ISSUER, c,
                                                 iat=NOW + 10, exp=g.expires_at))
    assert (replacement.txn, replacement.prior, replacement.req_wl) == (current.txn, (A,), B)


def test_narrow_shorter_ttl_and_expired_current(current: TxnToken) -> None:
    kw: dict[str, Any] = {"requester": B, "trust_domain": TD, "scope": "read"}
    assert narrow(current, (A,), now=NOW, ttl=60, **kw).expires_at == NOW + 60
    with pytest.raises(TokenError, match="expires now"):
        narrow(current, (A,), now=current.exp, ttl=60, **kw)


# ================================================================================================ TxnVerifier

Build = Callable[[Env], str]

ACCEPTED: list[tuple[str, Build]] = [
    ("honest", honest),
    ("replacement with prior", lambda e: mint(e, req_wl=B, prior=[A])),
    ("expired within the leeway", lambda e: mint(e, exp=int(NOW - LEEWAY + 1))),
    ("issued in the future within the leeway", lambda e: mint(e, iat=int(NOW + LEEWAY - 1))),
    ("typ in upper case", lambda e: mint(e, header={"typ": TXN_TYP.upper()})),
    ("scope as a list", lambda e: mint(e, scope=["read"])),
    ("no rctx", lambda e: mint(e, rctx=...)),
]


@pytest.mark.parametrize("build", [pytest.param(b, id=n) for n, b in ACCEPTED])
def test_txn_verifier_accepts(env: Env, build: Build) -> None:
    txn = env.txns.verify(build(env))
    assert txn.sub == "alice" and txn.txn and txn.subject_jti


def _access_token_as_txn(e: Env) -> str:
    """A mesh access token (typ at+jwt) with every transaction-token claim, even aud = the trust domain."""
    c = claims_of(e)
    extra = {k: c[k] for k in ("txn", "scope", "tctx", "rctx", "req_wl")}
    return e.mesh.issue(sub="alice", roles=["client"], audience=TD, ttl=TTL, extra=extra)


def _revoked_subject(e: Env) -> str:
    raw = honest(e)
    e.revoked.add(claims_of(e)["tctx"]["sjti"])
    return raw


def _other_signature(e: Env) -> str:
    h, p, _ = honest(e).split(".")
    return f"{h}.{p}.{mint(e, sub='mallory').split('.')[2]}"


REFUSED: list[tuple[str, Build, str]] = [  # (case, attack, why it fails)
    # the type: only a transaction token is one
    ("an at+jwt access token presented as a transaction token", _access_token_as_txn, "type not accepted"),
    ("typ missing", lambda e: mint(e, header={"typ": ...}), "type not accepted"),
    ("typ jwt", lambda e: mint(e, header={"typ": "jwt"}), "type not accepted"),
    ("typ of a hop link", lambda e: mint(e, header={"typ": "txn-link+jwt"}), "type not accepted"),
    # audience and time
    ("aud: the token audience", lambda e: mint(e, aud=AUDIENCE), "another trust domain"),
    ("aud: another trust domain", lambda e: mint(e, aud="evil.org"), "another trust domain"),
    ("aud: a list", lambda e: mint(e, aud=[TD]), "another trust domain"),
    ("aud missing", lambda e: mint(e, aud=...), "another trust domain"),
    ("expired past the leeway", lambda e: mint(e, exp=int(NOW - LEEWAY - 1)), "expired"),
    ("issued in the future past the leeway", lambda e: mint(e, iat=int(NOW + LEEWAY + 1)), "in the future"),
    ("exp missing", lambda e: mint(e, exp=...), "exp/iat"),
    ("iat missing", lambda e: mint(e, iat=...), "exp/iat"),
    ("exp a boolean", lambda e: mint(e, exp=True), "exp/iat"),
    # the signature and the issuer
    ("forged signature: another key, the mesh kid", lambda e: mint(e, header={"kid": e.mesh.kid}, by=e.rogue),
     "signature invalid"),
    ("forged signature: another key, its own kid", lambda e: mint(e, by=e.rogue), "kid unknown"),
    ("signature of another token", _other_signature, "signature invalid"),
    ("other issuer, mesh key", lambda e: mint(e, iss="spiffe://evil.org"), "issuer not accepted"),
    ("external issuer, its own key", lambda e: mint(e, by=e.external, iss=EXTERNAL), "issuer not accepted"),
    ("external issuer's key, mesh iss", lambda e: mint(e, by=e.external), "kid unknown"),
    ("alg none", lambda e: mint(e, header={"alg": "none"}), "algorithm not allowed"),
    ("alg HS256", lambda e: mint(e, header={"alg": "HS256"}), "algorithm not allowed"),
    ("key header jwk", lambda e: mint(e, header={"jwk": crypto.public_jwk(e.rogue.key)}, by=e.rogue), "key header"),
    ("key header x5c", lambda e: mint(e, header={"x5c": ["AAAA"]}), "key header"),
    ("kid missing", lambda e: mint(e, header={"kid": ...}), "kid missing"),
    # revocation of the subject token ends the transaction
    ("revoked subject jti", _revoked_subject, "subject token was revoked"),
    # claims
    ("req_wl of another trust domain", lambda e: mint(e, req_wl=sid("a", "evil.org")), "not a member"),
    ("req_wl not an agent", lambda e: mint(e, req_wl=f"spiffe://{TD}/ns/prod/sa/a"), "not a member"),
    ("req_wl not a SPIFFE ID", lambda e: mint(e, req_wl="alice"), "not a member"),
    ("req_wl missing", lambda e: mint(e, req_wl=...), "not a member"),
    ("prior not a list", lambda e: mint(e, prior=A), "prior claim"),
    ("prior with a foreign member", lambda e: mint(e, prior=[A, sid("b", "evil.org")]), "not a member"),
    ("prior with a non-string", lambda e: mint(e, prior=[A, 7]), "prior claim"),
    ("prior with a bare name", lambda e: mint(e, prior=["a"]), "not a member"),
    ("txn missing", lambda e: mint(e, txn=...), "txn/sub"),
    ("txn too long", lambda e: mint(e, txn="t" * 129), "txn/sub"),
    ("sub empty", lambda e: mint(e, sub=""), "txn/sub"),
    ("tctx missing", lambda e: mint(e, tctx=...), "tctx/rctx"),
    ("tctx without sjti", lambda e: mint(e, tctx={"roles": [], "route": ""}), "tctx claim"),
    ("tctx roles not a list", lambda e: mint(e, tctx={"roles": "admin", "route": "", "sjti": "j"}), "tctx claim"),
    ("rctx with a non-string value", lambda e: mint(e, rctx={"n": 1}), "tctx/rctx"),
    ("scope neither a string nor a list", lambda e: mint(e, scope=5), "scope claim"),
    # size and encoding
    ("too large", lambda e: mint(e, pad="x" * 9000), "too large"),
    ("non-ASCII", lambda e: honest(e)[:-2] + "é", "malformed"),
    ("empty", lambda e: "", "missing"),
    ("two segments", lambda e: honest(e).rsplit(".", 1)[0], "malformed"),
]


@pytest.mark.parametrize(("build", "reason"), [pytest.param(b, r, id=n) for n, b, r in REFUSED])
def test_txn_verifier_refuses(env: Env, build: Build, reason: str) -> None:
    assert env.txns.verify(honest(env)).sub == "alice"  # the honest twin
    raw = build(env)
    with pytest.raises(DelegationError) as err:
        env.txns.verify(raw)
    expected = "txn-revoked" if "revoked" in reason else "txn-token"  # the client's to fix, not the mesh's
    assert err.value.check == expected and reason in err.value.message, err.value.message
    for part in (p for p in raw.split(".") if len(p) > 16):
        assert part not in err.value.message  # messages never quote a token


def test_cache_rechecks_expiry(env: Env) -> None:
    raw = honest(env)
    first = env.txns.verify(raw)
    assert env.txns.verify(raw) is first  # served from the cache
    env.clock.advance(TTL + LEEWAY)  # at exp + leeway: still good
    assert env.txns.verify(raw) is first
    env.clock.advance(1)
    with pytest.raises(DelegationError, match="expired") as err:
        env.txns.verify(raw)
    assert err.value.check == "txn-token"
    with pytest.raises(DelegationError, match="expired"):  # and again, now uncached
        env.txns.verify(raw)


def test_cache_rechecks_revocation(env: Env) -> None:
    raw = honest(env)
    txn = env.txns.verify(raw)
    other = mint(env, txn="another-transaction")
    env.txns.verify(other)
    env.revoked.add(txn.subject_jti)  # the subject token is revoked while both are cached
    for token in (raw, other):
        with pytest.raises(DelegationError, match="revoked") as err:
            env.txns.verify(token)
        assert err.value.check == "txn-revoked"
    env.revoked.clear()
    assert env.txns.verify(raw).txn == txn.txn  # nothing else was forgotten


def test_cache_forgets_when_the_keys_change(env: Env) -> None:
    raw = honest(env)
    env.txns.verify(raw)
    env.tokens.keys = KeySet.from_authority(env.rogue)  # the mesh key was rotated out
    with pytest.raises(DelegationError) as err:
        env.txns.verify(raw)
    assert err.value.check == "txn-token"
    env.tokens.keys = KeySet.from_authority(env.mesh)
    assert env.txns.verify(raw).sub == "alice"


@pytest.mark.parametrize("audience", [AUDIENCE, TD])
def test_a_txn_token_is_never_an_access_token(env: Env, audience: str) -> None:
    """The ordinary verifier (a member's own token, the bridge's bearer token, a subject token at the exchange)
    refuses the transaction token's type, even when its audience is configured to be the trust domain."""
    raw = honest(env)
    assert env.txns.verify(raw).sub == "alice"
    tokens = TokenVerifier(KeySet.from_authority(env.mesh), audience=audience, issuers={ISSUER}, clock=env.clock)
    access = env.mesh.issue(sub="alice", roles=["client"], audience=audience, ttl=TTL)
    assert tokens.verify(access).sub == "alice"  # the honest twin: an access token
    for verify in (tokens.verify, tokens.verify_unbound, tokens.inspect):
        with pytest.raises(TokenError, match="type not accepted"):
            verify(raw)
    with pytest.raises(TokenError, match="type not accepted"):
        tokens.verify(raw, peer_thumbprint="x", peer_spiffe_id=A, require_binding=True)
