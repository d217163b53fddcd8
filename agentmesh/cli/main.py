"""The ``agentmesh`` command: one module per command group, errors as one line and a non-zero exit."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from agentmesh.errors import MeshError

__all__ = ["main"]

#: command groups, each a module of agentmesh.cli with ``register(subparsers)``
GROUPS = ("ca", "cert", "token", "control", "agent", "up", "call", "audit", "bridge", "lifecycle")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"agentmesh: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="agentmesh", description="A gRPC service mesh for AI agents.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for group in GROUPS:
        try:
            module = importlib.import_module(f"agentmesh.cli.{group}")
        except ModuleNotFoundError as e:
            if e.name == f"agentmesh.cli.{group}":
                continue  # a group not built into this version
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MeshError as e:
        print(f"agentmesh: error: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        print(f"agentmesh: error: {e.strerror or e.__class__.__name__}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
