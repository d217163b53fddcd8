"""``agentmesh token init|issue|inspect|jwks|revoke``: the mesh token key beside the CA, and its tokens.

Every subcommand finds the key with ``--ca DIR`` or, reading the mesh file, ``--config FILE`` (then the
issuer, audience and ``tokens.client_ttl`` come from it too). ``inspect`` shows what a token says
(never its signature) and, given the key, whether it verifies; ``revoke`` takes a jti, as ``inspect``
and ``issue -o json`` show it, or a whole token.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from agentmesh.cli.output import add_output, emit, relative, table, utc
from agentmesh.cli.usage import examples
from agentmesh.config import MeshConfig
from agentmesh.configfile import load_config
from agentmesh.errors import ConfigError, TokenError
from agentmesh.identity import cert_thumbprint
from agentmesh.tokens import KeySet, RevocationStore, TokenAuthority, TokenVerifier, default_issuer
from agentmesh.tokens.crypto import HMAC_ALGORITHMS, SIGNING_ALGORITHMS
from agentmesh.tokens.jws import ParsedToken, parse_compact
from agentmesh.tokens.txn import TXN_TYP
from agentmesh.tokens.verify import verify_jws
from agentmesh.units import parse_duration

__all__ = ["register"]

DEFAULT_AUDIENCE = "agentmesh"
DEFAULT_CLIENT_TTL = 900.0  # tokens.client_ttl's default
_STDIN = "-"
_MESH_JTI = re.compile(r"[0-9a-f]{32}")  # secrets.token_hex(16), as TokenAuthority.issue makes it
_INSPECT_MAX_BYTES = 65536
_ACCESS_TYPS = frozenset({"at+jwt", "application/at+jwt", "jwt", TXN_TYP})
_SHOWN = ("iss", "sub", "aud", "roles", "jti", "iat", "nbf", "exp", "cnf")  # every other claim: "other claims"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("token", help="issue, inspect and revoke mesh access tokens", **examples(
        "agentmesh token issue --ca .mesh/ca --sub alice@example.org --role client",
        "agentmesh token inspect - --ca .mesh/ca",
        "agentmesh token revoke --ca .mesh/ca 134b365bff4d2a674e41532b7656daf9",
    ))
    s = p.add_subparsers(dest="token_command", required=True, metavar="SUBCOMMAND")

    init = s.add_parser("init", help="create the token signing key beside the CA", **examples(
        "agentmesh token init --ca .mesh/ca",
        "agentmesh token init --ca .mesh/ca --alg EdDSA --force",
    ))
    _key_arguments(init)
    init.add_argument("--force", action="store_true", help="replace an existing token key")
    init.add_argument("--alg", choices=SIGNING_ALGORITHMS, default="ES256", help="signing algorithm")
    init.set_defaults(func=_init)

    issue = s.add_parser("issue", help="print a signed token (creates the key if there is none)", **examples(
        "agentmesh token issue --ca .mesh/ca --sub alice@example.org --role client --ttl 15m",
        "agentmesh token issue --config mesh.yaml --sub alice@example.org --role client -o json",
        "agentmesh token issue --ca .mesh/ca --sub spiffe://example.org/agent/ingestor --role ingestor "
        "--cert .mesh/identities/ingestor/cert.pem",
    ))
    _key_arguments(issue)
    issue.add_argument("--sub", required=True, help="subject (principal) of the token")
    issue.add_argument("--role", required=True, action="append", dest="roles", help="a role (repeatable)")
    issue.add_argument("--ttl", help="lifetime, e.g. 15m or 1h (default: tokens.client_ttl with --config, else 15m)")
    issue.add_argument("--aud", help=f"audience (default: tokens.audience with --config, else {DEFAULT_AUDIENCE})")
    issue.add_argument("--issuer", help="issuer (default: tokens.issuer with --config, else spiffe://<trust domain>)")
    issue.add_argument("--cert", type=Path, help="bind the token to this certificate (PEM)")
    add_output(issue)
    issue.set_defaults(func=_issue)

    inspect = s.add_parser("inspect", help="what a token says (claims, jti, expiry, binding; never its signature); "
                           "with --ca or --config, whether it verifies",
                           description="Shows what a token says: its claims, jti, times (UTC and relative), "
                           "certificate binding and header. It never prints the signature. With --ca or --config it "
                           "also checks the signature against the mesh token key and the revocation list.",
                           **examples(
        "agentmesh token inspect eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln",
        "echo \"$TOKEN\" | agentmesh token inspect - --ca .mesh/ca",
        "agentmesh token inspect - --config mesh.yaml -o json",
    ))
    inspect.add_argument("token", metavar="TOKEN|-", help="the token ('-' reads it from stdin)")
    _key_arguments(inspect, required=False)
    add_output(inspect)
    inspect.set_defaults(func=_inspect)

    jwks = s.add_parser("jwks", help="print the JWKS of the token key", **examples(
        "agentmesh token jwks --ca .mesh/ca",
    ))
    _key_arguments(jwks)
    jwks.set_defaults(func=_jwks)

    revoke = s.add_parser("revoke", help="revoke a token by its jti, or a whole token", **examples(
        "agentmesh token revoke --ca .mesh/ca 134b365bff4d2a674e41532b7656daf9",
        "echo \"$TOKEN\" | agentmesh token revoke --ca .mesh/ca --token -",
        "agentmesh token revoke --config mesh.yaml --external 0b8e4c1e-5d1f-4c3a-9d7e-2f6a1b3c4d5e",
    ))
    _key_arguments(revoke)
    revoke.add_argument("jti", nargs="?", metavar="JTI", help="the token id to revoke (agentmesh token inspect shows "
                        "it), or a whole token")
    revoke.add_argument("--token", help="the token to revoke ('-' reads it from stdin)")
    revoke.add_argument("--external", action="store_true",
                        help="the jti is of an external issuer's token (any form; mesh jtis are 32 hex digits)")
    revoke.add_argument("--aud", help="its audience (default: tokens.audience with --config, else agentmesh)")
    revoke.add_argument("--issuer", help="its issuer (default: tokens.issuer with --config, else spiffe://<td>)")
    revoke.set_defaults(func=_revoke)


def _key_arguments(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    where = p.add_mutually_exclusive_group(required=required)
    where.add_argument("--ca", type=Path, help="CA directory (the token key is beside the CA)")
    where.add_argument("--config", type=Path, help="mesh config file (its CA directory and tokens section)")


@dataclass(frozen=True, slots=True)
class _Keys:
    """Where the token key is, and the defaults that go with it."""

    ca: Path
    issuer: str
    audience: str
    config: MeshConfig | None

    @classmethod
    def of(cls, args: argparse.Namespace) -> _Keys:
        if args.config is not None:
            config = load_config(args.config)
            return cls(config.ca_dir, config.tokens.issuer, config.tokens.audience, config)
        return cls(args.ca, default_issuer(args.ca), DEFAULT_AUDIENCE, None)

    def authority(self) -> TokenAuthority:
        return TokenAuthority.load(self.ca, issuer=self.issuer)


def _init(args: argparse.Namespace) -> int:
    keys = _Keys.of(args)
    path = TokenAuthority.init(keys.ca, force=args.force, algorithm=args.alg)
    print(f"created {args.alg} token key {path} (kid {keys.authority().kid})")
    return 0


def _issue(args: argparse.Namespace) -> int:
    keys = _Keys.of(args)
    default_ttl = keys.config.tokens.client_ttl if keys.config is not None else DEFAULT_CLIENT_TTL
    ttl = parse_duration(args.ttl, what="--ttl") if args.ttl is not None else default_ttl
    thumbprint = None
    if args.cert is not None:
        try:
            thumbprint = cert_thumbprint(x509.load_pem_x509_certificate(args.cert.read_bytes()))
        except OSError as e:
            raise ConfigError(f"--cert: cannot read {args.cert}: {e.strerror or type(e).__name__}") from None
        except ValueError:
            raise ConfigError(f"--cert: {args.cert} is not a PEM certificate") from None
    elif args.sub.startswith("spiffe://"):
        raise ConfigError("a spiffe:// subject needs --cert: such tokens must be certificate-bound")
    auth = TokenAuthority.ensure(keys.ca, issuer=args.issuer or keys.issuer)
    token = auth.issue(sub=args.sub, roles=args.roles, audience=args.aud or keys.audience, ttl=ttl,
                       cnf_thumbprint=thumbprint)
    claims = parse_compact(token, len(token)).claims
    emit(args.output, {"token": token, "jti": claims["jti"], "sub": claims["sub"], "roles": claims["roles"],
                       "iss": claims["iss"], "aud": claims["aud"], "issued_at": utc(claims["iat"]),
                       "expires_at": utc(claims["exp"]), "cnf_thumbprint": thumbprint},
         lambda: [token])
    if args.output == "table" and sys.stderr.isatty():  # for the person at the terminal; scripts use -o json
        print(f"agentmesh: token jti {claims['jti']} for {args.sub}, expires {utc(claims['exp'])} "
              f"({relative(claims['exp'], time.time())})", file=sys.stderr)
    return 0


def _read_token(value: str) -> str:
    token = (sys.stdin.read() if value == _STDIN else value).strip()
    return token.removeprefix("Bearer ").strip()


def _inspect(args: argparse.Namespace) -> int:
    token = _read_token(args.token)
    parsed = parse_compact(token, _INSPECT_MAX_BYTES)
    now = time.time()
    signature = _check_signature(args, parsed) if args.ca is not None or args.config is not None else None
    data = _inspection(parsed, now, signature)
    emit(args.output, data, lambda: _inspection_lines(data, now))
    return 0


@dataclass(frozen=True, slots=True)
class _Signature:
    valid: bool
    detail: str
    revoked: bool


def _check_signature(args: argparse.Namespace, parsed: ParsedToken) -> _Signature:
    keys = _Keys.of(args)
    auth = keys.authority()
    algorithms = keys.config.tokens.algorithms if keys.config is not None else SIGNING_ALGORITHMS
    revoked = str(parsed.claims.get("jti")) in RevocationStore(keys.ca).load()
    try:
        verify_jws(parsed, keys=KeySet.from_authority(auth), issuers=frozenset({keys.issuer}),
                   algorithms=frozenset(algorithms) - HMAC_ALGORITHMS, accepted_typ=_ACCESS_TYPS)
    except TokenError as e:
        return _Signature(False, f"{e.message} (checked against the token key in {keys.ca})", revoked)
    return _Signature(True, f"signed by the mesh token key in {keys.ca} (kid {auth.kid})", revoked)


def _date(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _inspection(parsed: ParsedToken, now: float, signature: _Signature | None) -> dict[str, Any]:
    claims, header = parsed.claims, parsed.header
    nbf, exp = _date(claims, "nbf"), _date(claims, "exp")
    cnf = claims.get("cnf")
    bound = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
    if signature is not None and signature.revoked:
        status = "revoked"
    elif exp is not None and now > exp:
        status = "expired"
    elif nbf is not None and now < nbf:
        status = "not yet valid"
    elif signature is not None and not signature.valid:
        status = "invalid"
    else:
        status = "valid" if signature is not None else "unverified"
    times = {name: utc(ts) for name, key in (("issued_at", "iat"), ("not_before", "nbf"), ("expires_at", "exp"))
             if (ts := _date(claims, key)) is not None}
    return {
        "header": {k: header[k] for k in ("alg", "kid", "typ") if k in header},
        "claims": claims,
        "jti": claims.get("jti"),
        **times,
        "expires_in": round(exp - now) if exp is not None else None,
        "cnf_thumbprint": bound if isinstance(bound, str) else None,
        "signature": ({"checked": False} if signature is None else
                      {"checked": True, "valid": signature.valid, "detail": signature.detail}),
        "status": status,
    }


def _inspection_lines(data: dict[str, Any], now: float) -> list[str]:
    claims: dict[str, Any] = data["claims"]

    def text(value: Any) -> str:
        return ", ".join(map(str, value)) if isinstance(value, list) else "-" if value is None else str(value)

    def when(key: str) -> str:
        ts = _date(claims, key)
        return f"{utc(ts)} ({relative(ts, now)})" if ts is not None else "-"

    sig = data["signature"]
    rows = [("subject:", text(claims.get("sub"))), ("roles:", text(claims.get("roles"))),
            ("issuer:", text(claims.get("iss"))), ("audience:", text(claims.get("aud"))),
            ("jti:", text(claims.get("jti"))), ("issued:", when("iat"))]
    if claims.get("nbf") not in (None, claims.get("iat")):
        rows.append(("not before:", when("nbf")))
    rows += [("expires:", when("exp")),
             ("bound to:", f"the certificate with x5t#S256 {data['cnf_thumbprint']}" if data["cnf_thumbprint"]
              else "no certificate (a bearer token)"),
             ("header:", ", ".join(f"{k} {v}" for k, v in data["header"].items()))]
    other = {k: v for k, v in claims.items() if k not in _SHOWN}
    if other:
        rows.append(("other claims:", json.dumps(other, sort_keys=True)))
    rows.append(("signature:", ("valid: " if sig["valid"] else "INVALID: ") + sig["detail"] if sig["checked"]
                 else "not checked (give --ca DIR or --config FILE)"))
    rows.append(("status:", data["status"]))
    return table(rows)


def _jwks(args: argparse.Namespace) -> int:
    print(json.dumps(_Keys.of(args).authority().jwks(), indent=2))
    return 0


def _revoke(args: argparse.Namespace) -> int:
    if (args.jti is None) == (args.token is None):
        raise ConfigError("give either a JTI or --token TOKEN")
    keys = _Keys.of(args)
    store = RevocationStore(keys.ca)
    if args.jti is not None and args.jti.count(".") != 2:  # a jti, not a whole token
        jti = _valid_jti(args.jti, external=args.external)
        store.revoke(jti, None)  # expiry unknown: kept on the list for good
        print(f"revoked {jti}")
        return 0
    whole = args.jti is not None
    token = _read_token(args.jti if whole else args.token)
    issuer = args.issuer or keys.issuer
    auth = TokenAuthority.load(keys.ca, issuer=issuer)
    verifier = TokenVerifier(KeySet.from_authority(auth), audience=args.aud or keys.audience, issuers={issuer},
                             cache_size=0)
    try:
        vt = verifier.inspect(token)
    except TokenError as e:
        raise TokenError(f"cannot revoke: {e.message}") from None
    store.revoke(vt.jti, vt.exp)
    taken = "; the jti of the token given" if whole else ""
    print(f"revoked {vt.jti} (subject {vt.sub}, expires {utc(vt.exp)}{taken})")
    return 0


def _valid_jti(value: str, *, external: bool) -> str:
    if external:
        if 0 < len(value) <= 256 and value.isprintable() and not any(c.isspace() for c in value):
            return value
        raise ConfigError("JTI: expected up to 256 printable characters without spaces")
    if _MESH_JTI.fullmatch(value):
        return value
    shown = value if len(value) <= 40 and value.isprintable() else value[:40].encode("unicode_escape").decode() + "..."
    raise ConfigError(f"JTI: {shown!r} is not a mesh token id (32 hex digits, as 'agentmesh token inspect' shows); "
                      "for a token of an external issuer add --external")
