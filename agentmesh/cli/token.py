"""``agentmesh token``: the mesh token key beside the CA; issue, publish (JWKS) and revoke tokens."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cryptography import x509

from agentmesh.errors import ConfigError, TokenError
from agentmesh.identity import cert_thumbprint
from agentmesh.tokens import KeySet, RevocationStore, TokenAuthority, TokenVerifier, default_issuer
from agentmesh.tokens.crypto import SIGNING_ALGORITHMS
from agentmesh.units import parse_duration

__all__ = ["register"]

DEFAULT_AUDIENCE = "agentmesh"
_STDIN = "-"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("token", help="issue, publish and revoke mesh access tokens")
    s = p.add_subparsers(dest="token_command", required=True, metavar="SUBCOMMAND")

    init = s.add_parser("init", help="create the token signing key beside the CA")
    init.add_argument("--ca", required=True, type=Path, help="CA directory")
    init.add_argument("--force", action="store_true", help="replace an existing token key")
    init.add_argument("--alg", choices=SIGNING_ALGORITHMS, default="ES256", help="signing algorithm")
    init.set_defaults(func=_init)

    issue = s.add_parser("issue", help="print a signed token (creates the key if there is none)")
    issue.add_argument("--ca", required=True, type=Path, help="CA directory")
    issue.add_argument("--sub", required=True, help="subject (principal) of the token")
    issue.add_argument("--role", required=True, action="append", dest="roles", help="a role (repeatable)")
    issue.add_argument("--ttl", default="15m", help="lifetime, e.g. 15m or 1h (default 15m)")
    issue.add_argument("--aud", default=DEFAULT_AUDIENCE, help=f"audience (default {DEFAULT_AUDIENCE})")
    issue.add_argument("--issuer", help="issuer (default spiffe://<trust domain>)")
    issue.add_argument("--cert", type=Path, help="bind the token to this certificate (PEM)")
    issue.set_defaults(func=_issue)

    jwks = s.add_parser("jwks", help="print the JWKS of the token key")
    jwks.add_argument("--ca", required=True, type=Path, help="CA directory")
    jwks.set_defaults(func=_jwks)

    revoke = s.add_parser("revoke", help="revoke a token by its jti, or a whole token")
    revoke.add_argument("--ca", required=True, type=Path, help="CA directory")
    revoke.add_argument("jti", nargs="?", help="the token id to revoke")
    revoke.add_argument("--token", help="the token to revoke ('-' reads it from stdin)")
    revoke.add_argument("--aud", default=DEFAULT_AUDIENCE, help=f"its audience (default {DEFAULT_AUDIENCE})")
    revoke.add_argument("--issuer", help="its issuer (default spiffe://<trust domain>)")
    revoke.set_defaults(func=_revoke)


def _init(args: argparse.Namespace) -> int:
    path = TokenAuthority.init(args.ca, force=args.force, algorithm=args.alg)
    auth = TokenAuthority.load(args.ca, issuer="unused")
    print(f"created {args.alg} token key {path} (kid {auth.kid})")
    return 0


def _issue(args: argparse.Namespace) -> int:
    ttl = parse_duration(args.ttl, what="--ttl")
    issuer = args.issuer or default_issuer(args.ca)
    thumbprint = None
    if args.cert is not None:
        try:
            thumbprint = cert_thumbprint(x509.load_pem_x509_certificate(args.cert.read_bytes()))
        except ValueError:
            raise ConfigError(f"--cert: {args.cert} is not a PEM certificate") from None
    elif args.sub.startswith("spiffe://"):
        raise ConfigError("a spiffe:// subject needs --cert: such tokens must be certificate-bound")
    auth = TokenAuthority.ensure(args.ca, issuer=issuer)
    print(auth.issue(sub=args.sub, roles=args.roles, audience=args.aud, ttl=ttl, cnf_thumbprint=thumbprint))
    return 0


def _jwks(args: argparse.Namespace) -> int:
    auth = TokenAuthority.load(args.ca, issuer="unused")
    print(json.dumps(auth.jwks(), indent=2))
    return 0


def _revoke(args: argparse.Namespace) -> int:
    if (args.jti is None) == (args.token is None):
        raise ConfigError("give either a JTI or --token TOKEN")
    store = RevocationStore(args.ca)
    if args.jti is not None:
        store.revoke(args.jti, None)  # expiry unknown: kept on the list for good
        print(f"revoked {args.jti}")
        return 0
    from_stdin = args.token == _STDIN
    token = (sys.stdin.read() if from_stdin else args.token).strip()
    issuer = args.issuer or default_issuer(args.ca)
    auth = TokenAuthority.load(args.ca, issuer=issuer)
    verifier = TokenVerifier(KeySet.from_authority(auth), audience=args.aud, issuers={issuer}, cache_size=0)
    try:
        vt = verifier.inspect(token)
    except TokenError as e:
        raise TokenError(f"cannot revoke: {e.message}") from None
    store.revoke(vt.jti, vt.exp)
    print(f"revoked {vt.jti} (subject {vt.sub})")
    return 0
