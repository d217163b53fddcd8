"""``agentmesh ca init``: create the mesh's root and issuing CA."""

from __future__ import annotations

import argparse
from pathlib import Path

from agentmesh.pki import CertificateAuthority

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("ca", help="manage the mesh certificate authority")
    s = p.add_subparsers(dest="ca_command", required=True, metavar="SUBCOMMAND")
    init = s.add_parser("init", help="create a root CA and an issuing intermediate")
    init.add_argument("--dir", required=True, type=Path, help="CA directory (created 0700)")
    init.add_argument("--trust-domain", required=True, help="SPIFFE trust domain, e.g. example.org")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=_init)


def _init(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.init(args.dir, args.trust_domain, force=args.force)
    print(f"created CA for spiffe://{ca.trust_domain} in {ca.dir}")
    print(f"  root:         {ca.dir / 'root.pem'} (expires {ca.root.not_valid_after_utc:%Y-%m-%d})")
    print(f"  issuing CA:   {ca.dir / 'ca.pem'} (expires {ca.cert.not_valid_after_utc:%Y-%m-%d})")
    print(f"  trust bundle: {ca.dir / 'bundle.pem'}")
    return 0
