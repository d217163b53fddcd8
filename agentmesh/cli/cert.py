"""``agentmesh cert issue|list|revoke|renew``: onboard agents and manage their certificates."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path

from agentmesh.pki import CertificateAuthority, IssuedCert, write_identity
from agentmesh.units import parse_duration

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("cert", help="issue, list, revoke and renew agent certificates")
    s = p.add_subparsers(dest="cert_command", required=True, metavar="SUBCOMMAND")

    issue = s.add_parser("issue", help="issue an agent certificate (X509-SVID)")
    issue.add_argument("name", help="agent name: lowercase letters, digits and '-'")
    _common(issue, out=True)
    issue.set_defaults(func=_issue)

    renew = s.add_parser("renew", help="a fresh key and certificate for an onboarded agent")
    renew.add_argument("name")
    _common(renew, out=True)
    renew.set_defaults(func=_renew)

    ls = s.add_parser("list", help="list issued certificates")
    ls.add_argument("--ca", required=True, type=Path, help="CA directory")
    ls.set_defaults(func=_list)

    rv = s.add_parser("revoke", help="revoke an agent's certificates (by name) or one serial (hex)")
    rv.add_argument("target", metavar="NAME|SERIAL")
    rv.add_argument("--ca", required=True, type=Path, help="CA directory")
    rv.set_defaults(func=_revoke)


def _common(p: argparse.ArgumentParser, *, out: bool) -> None:
    p.add_argument("--ca", required=True, type=Path, help="CA directory")
    p.add_argument("--out", required=True, type=Path, help="directory for cert.pem, key.pem, bundle.pem")
    p.add_argument("--ttl", default="24h", help="lifetime, e.g. 24h, 30m (default 24h)")
    p.add_argument("--dns", action="append", default=[], metavar="HOST", help="extra DNS SAN (repeatable)")


def _write(issued: IssuedCert, out: Path) -> int:
    write_identity(issued, out)
    print(f"{issued.spiffe_id}  serial {issued.serial:x}  expires "
          f"{issued.cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z  -> {out}")
    return 0


def _issue(args: argparse.Namespace) -> int:
    ttl = parse_duration(args.ttl, what="--ttl")
    ca = CertificateAuthority.load(args.ca)
    return _write(ca.issue(args.name, ttl=ttl, dns=args.dns), args.out)


def _renew(args: argparse.Namespace) -> int:
    ttl = parse_duration(args.ttl, what="--ttl")
    ca = CertificateAuthority.load(args.ca)
    return _write(ca.renew(args.name, ttl=ttl, dns=args.dns), args.out)


def _list(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.load(args.ca)
    now = time.time()
    rows = [("NAME", "SERIAL", "SPIFFE ID", "NOT AFTER", "STATUS")]
    for e in ca.entries():
        rows.append((e.name, format(e.serial, "x"), e.spiffe_id,
                     datetime.fromtimestamp(e.not_after, UTC).strftime("%Y-%m-%d %H:%M:%SZ"), e.status(now)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _revoke(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.load(args.ca)
    for e in ca.revoke(args.target):
        print(f"revoked {e.name} serial {e.serial:x}")
    print(f"CRL updated: {ca.crl_path}")
    return 0
