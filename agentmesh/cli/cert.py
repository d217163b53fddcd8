"""``agentmesh cert issue|list|revoke|renew|join-token``: onboard agents and manage their certificates."""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from agentmesh.cli.output import add_output, emit, table, utc
from agentmesh.cli.usage import examples
from agentmesh.pki import (
    BlockEntry,
    CertificateAuthority,
    IndexEntry,
    IssuedCert,
    JoinTokens,
    MemberBlocked,
    write_identity,
)
from agentmesh.units import parse_duration

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("cert", help="issue, list, revoke and renew agent certificates", **examples(
        "agentmesh cert issue summarizer --ca .mesh/ca --out .mesh/identities/summarizer",
        "agentmesh cert list --ca .mesh/ca",
        "agentmesh cert join-token summarizer --ca .mesh/ca --ttl 15m",
    ))
    s = p.add_subparsers(dest="cert_command", required=True, metavar="SUBCOMMAND")

    issue = s.add_parser("issue", help="issue an agent certificate (X509-SVID)", **examples(
        "agentmesh cert issue summarizer --ca .mesh/ca --out .mesh/identities/summarizer",
        "agentmesh cert issue bridge --ca .mesh/ca --out .mesh/identities/bridge --dns localhost --ttl 24h",
    ))
    issue.add_argument("name", help="agent name: lowercase letters, digits and '-'")
    _common(issue, out=True)
    issue.set_defaults(func=_issue)

    renew = s.add_parser("renew", help="a fresh key and certificate for an onboarded agent", **examples(
        "agentmesh cert renew summarizer --ca .mesh/ca --out .mesh/identities/summarizer",
    ))
    renew.add_argument("name")
    _common(renew, out=True)
    renew.set_defaults(func=_renew)

    ls = s.add_parser("list", help="list issued certificates (and members on the kill switch)", **examples(
        "agentmesh cert list --ca .mesh/ca",
        "agentmesh cert list --ca .mesh/ca -o json",
    ))
    ls.add_argument("--ca", required=True, type=Path, help="CA directory")
    add_output(ls)
    ls.set_defaults(func=_list)

    rv = s.add_parser("revoke", help="revoke an agent's certificates (by name) or one serial (hex)", **examples(
        "agentmesh cert revoke summarizer --ca .mesh/ca --reason \"key leaked\"",
        "agentmesh cert revoke 5f3a9c --ca .mesh/ca",
    ))
    rv.add_argument("target", metavar="NAME|SERIAL")
    rv.add_argument("--ca", required=True, type=Path, help="CA directory")
    rv.add_argument("--reason", default="", help="why (recorded in the index, shown by 'cert list')")
    rv.set_defaults(func=_revoke)

    jt = s.add_parser("join-token", help="a one-time token with which a new agent gets its first certificate",
                      **examples("agentmesh cert join-token summarizer --ca .mesh/ca --ttl 15m",
                                 "agentmesh cert join-token bridge --ca .mesh/ca --dns localhost"))
    jt.add_argument("name", help="the agent the token is for")
    jt.add_argument("--ca", required=True, type=Path, help="CA directory")
    jt.add_argument("--ttl", default="15m", help="how long the token can be used, e.g. 15m, 1h (default 15m)")
    jt.add_argument("--dns", action="append", default=[], metavar="HOST", help="extra DNS SAN (repeatable)")
    jt.set_defaults(func=_join_token)


def _common(p: argparse.ArgumentParser, *, out: bool) -> None:
    p.add_argument("--ca", required=True, type=Path, help="CA directory")
    p.add_argument("--out", required=True, type=Path, help="directory for cert.pem, key.pem, bundle.pem")
    p.add_argument("--ttl", default="24h", help="lifetime, e.g. 24h, 30m (default 24h)")
    p.add_argument("--dns", action="append", default=[], metavar="HOST", help="extra DNS SAN (repeatable)")


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _operator() -> str:
    return os.environ.get("USER", "")[:64]


def _write(issued: IssuedCert, out: Path, ca: CertificateAuthority) -> int:
    write_identity(issued, out)
    print(f"{issued.spiffe_id}  serial {issued.serial:x}  expires "
          f"{issued.cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z  -> {out}")
    if issued.capped:
        print(f"agentmesh: warning: the certificate of {issued.name} ends with the issuing CA on "
              f"{ca.cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z, before --ttl; "
              f"rotate it with: agentmesh ca rotate --ca {ca.dir}", file=sys.stderr)
    return 0


def _issue(args: argparse.Namespace) -> int:
    ttl = parse_duration(args.ttl, what="--ttl")
    ca = CertificateAuthority.load(args.ca)
    return _write(ca.issue(args.name, ttl=ttl, dns=args.dns), args.out, ca)


def _renew(args: argparse.Namespace) -> int:
    ttl = parse_duration(args.ttl, what="--ttl")
    ca = CertificateAuthority.load(args.ca)
    return _write(ca.renew(args.name, ttl=ttl, dns=args.dns), args.out, ca)


def _list(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.load(args.ca)
    now = time.time()
    entries = ca.entries()
    blocks = sorted(ca.blocked().values(), key=lambda b: b.at)
    data = {
        "certificates": [{"name": e.name, "serial": format(e.serial, "x"), "spiffe_id": e.spiffe_id,
                          "not_after": utc(e.not_after), "status": e.status(now), "dns": list(e.dns),
                          "revoked_at": utc(e.revoked_at) if e.revoked_at is not None else None,
                          "reason": e.reason, "revoked_by": e.revoked_by} for e in entries],
        "blocked": [{"name": b.name, "reason": b.reason, "by": b.by, "at": utc(b.at)} for b in blocks],
    }
    emit(args.output, data, lambda: _list_lines(entries, blocks, now))
    return 0


def _list_lines(entries: list[IndexEntry], blocks: list[BlockEntry], now: float) -> list[str]:
    with_reason = any(e.reason for e in entries)  # the REASON column only when a revocation gave one
    rows = [("NAME", "SERIAL", "SPIFFE ID", "NOT AFTER", "STATUS", *(("REASON",) if with_reason else ()))]
    for e in entries:
        reason = (e.reason or "-") if e.revoked_at is not None else ""
        rows.append((e.name, format(e.serial, "x"), e.spiffe_id, _when(e.not_after), e.status(now),
                     *((reason,) if with_reason else ())))
    lines = table(rows)
    blocked = [(b.name, "blocked", b.reason or "-", f"by {b.by or '-'}", _when(b.at)) for b in blocks]
    return [*lines, "", *table(blocked)] if blocked else lines


def _revoke(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.load(args.ca)
    for e in ca.revoke(args.target, reason=args.reason, by=_operator()):
        print(f"revoked {e.name} serial {e.serial:x}")
    print(f"CRL updated: {ca.crl_path}")
    return 0


def _join_token(args: argparse.Namespace) -> int:
    ttl = parse_duration(args.ttl, what="--ttl")
    ca = CertificateAuthority.load(args.ca)
    blocked = ca.blocked()
    if args.name in blocked:
        raise MemberBlocked(args.name, blocked[args.name].reason)
    token = JoinTokens(ca.dir).create(args.name, ttl=ttl, dns=args.dns, blocked=blocked)
    print(token)
    print(f"agentmesh: join token for {args.name} (one use) expires {_when(time.time() + ttl)}; start the agent "
          f"with: agentmesh agent {args.name} --config mesh.yaml --join - (the token on stdin)", file=sys.stderr)
    return 0
