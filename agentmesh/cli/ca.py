"""``agentmesh ca init|rotate|rollover``: create the mesh's root and issuing CA, and renew them."""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptography import x509

from agentmesh.cli.usage import examples
from agentmesh.pki import CertificateAuthority

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("ca", help="manage the mesh certificate authority", **examples(
        "agentmesh ca init --dir .mesh/ca --trust-domain example.org",
        "agentmesh ca rotate --ca .mesh/ca",
    ))
    s = p.add_subparsers(dest="ca_command", required=True, metavar="SUBCOMMAND")
    init = s.add_parser("init", help="create a root CA and an issuing intermediate", **examples(
        "agentmesh ca init --dir .mesh/ca --trust-domain example.org",
    ))
    init.add_argument("--dir", required=True, type=Path, help="CA directory (created 0700)")
    init.add_argument("--trust-domain", required=True, help="SPIFFE trust domain, e.g. example.org")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=_init)

    rotate = s.add_parser("rotate", help="a new issuing intermediate (new key) under the same root",
                          **examples("agentmesh ca rotate --ca .mesh/ca"))
    rotate.add_argument("--ca", required=True, type=Path, help="CA directory")
    rotate.set_defaults(func=_rotate)

    roll = s.add_parser("rollover", help="a new root: members trust old + new, then issue from the new, then "
                        "--finish drops the old one", **examples(
                            "agentmesh ca rollover --ca .mesh/ca",
                            "agentmesh ca rollover --ca .mesh/ca --activate",
                            "agentmesh ca rollover --ca .mesh/ca --finish",
                        ))
    roll.add_argument("--ca", required=True, type=Path, help="CA directory")
    step = roll.add_mutually_exclusive_group()
    step.add_argument("--activate", action="store_true", help="issue from the new root now (the control plane "
                      "does this by itself once members have had time to receive the new root)")
    step.add_argument("--finish", action="store_true", help="drop the old root from the trust bundle")
    roll.set_defaults(func=_rollover)


def _describe(cert: x509.Certificate) -> str:
    return f"serial {cert.serial_number:x}, expires {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z"


def _init(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.init(args.dir, args.trust_domain, force=args.force)
    print(f"created CA for spiffe://{ca.trust_domain} in {ca.dir}")
    print(f"  root:         {ca.dir / 'root.pem'} (expires {ca.root.not_valid_after_utc:%Y-%m-%d})")
    print(f"  issuing CA:   {ca.dir / 'ca.pem'} (expires {ca.cert.not_valid_after_utc:%Y-%m-%d})")
    print(f"  trust bundle: {ca.dir / 'bundle.pem'}")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.load(args.ca)
    old = ca.cert
    new = ca.rotate()
    print(f"rotated the issuing CA of spiffe://{ca.trust_domain}")
    print(f"  old: {_describe(old)} (archived in {ca.dir / 'issuers'}; its key is deleted)")
    print(f"  new: {_describe(new)}")
    print(f"  CRL re-signed by the new issuing CA: {ca.crl_path}")
    return 0


def _rollover(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.load(args.ca)
    if args.finish:
        dropped = ca.finish_rollover()
        if not dropped:
            print(f"no root rollover under way: {ca.dir / 'bundle.pem'} holds the current root only")
            return 0
        for root in dropped:
            print(f"dropped the old root ({_describe(root)}) from {ca.dir / 'bundle.pem'}")
        print(f"  trusted root: {_describe(ca.root)}")
        print("members receive the new bundle from the control plane within seconds")
        return 0
    if args.activate:
        cert = ca.activate_rollover()
        print(f"the new root now issues: issuing CA {_describe(cert)}")
        print(f"next: once every member has renewed (half a certificate lifetime), run: "
              f"agentmesh ca rollover --ca {ca.dir} --finish")
        return 0
    old = ca.root
    new = ca.rollover()
    print(f"started a root rollover of spiffe://{ca.trust_domain}")
    print(f"  old root: {_describe(old)} (still issuing; in the trust bundle)")
    print(f"  new root: {_describe(new)} (in the trust bundle, cross-signed by the old root)")
    print("next: the control plane streams the new bundle to every member and, once they have had time to "
          "receive it, issues from the new root (or run --activate); when every member has renewed "
          f"(half a certificate lifetime), run: agentmesh ca rollover --ca {ca.dir} --finish")
    return 0
