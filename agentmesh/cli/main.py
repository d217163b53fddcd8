"""The ``agentmesh`` command: one module per command group, errors as one line and a non-zero exit."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys
import traceback
from collections.abc import Sequence

from agentmesh.cli.errors import describe, exit_code
from agentmesh.cli.usage import examples, walk

__all__ = ["main"]

#: command groups, each a module of agentmesh.cli with ``register(subparsers)``
GROUPS = ("init", "ca", "cert", "token", "control", "agent", "up", "status", "health", "call", "audit", "bridge",
          "lifecycle", "policy", "top", "graph")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"agentmesh: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="agentmesh", description="A gRPC service mesh for AI agents.", **examples(
        "agentmesh --version",
        "agentmesh up mesh.yaml",
        "agentmesh --debug call ingestor Invoke --config mesh.yaml --as bridge",
    ))
    parser.add_argument("--version", action="version", version=f"agentmesh {version()}")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an error (also: AGENTMESH_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for group in GROUPS:
        try:
            module = importlib.import_module(f"agentmesh.cli.{group}")
        except ModuleNotFoundError as e:
            if e.name == f"agentmesh.cli.{group}":
                continue  # a group not built into this version
            raise
        module.register(sub)
    for _, command in walk(parser):  # `agentmesh COMMAND ... --debug` works too
        if command is not parser and "--debug" not in command._option_string_actions:
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def version() -> str:
    try:
        return importlib.metadata.version("agentmesh")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        from agentmesh import __version__

        return __version__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        return exit_code(e)
    except Exception as e:  # every failure is one line (agentmesh.cli.errors); the traceback on request
        if args.debug or os.environ.get("AGENTMESH_DEBUG") == "1":
            traceback.print_exc()
        print(f"agentmesh: error: {describe(e)}", file=sys.stderr)
        return exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
