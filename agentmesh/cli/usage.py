"""Help text conventions: every command's ``--help`` ends with examples that really parse.

``sub.add_parser("list", help="...", **examples("agentmesh cert list --ca .mesh/ca"))`` puts an
``examples:`` section after the options; ``tests/cli/test_cli_help.py`` walks every command with
:func:`walk` and parses each example with the real parser, so the examples cannot drift.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

__all__ = ["examples", "walk"]


def examples(*lines: str) -> dict[str, Any]:
    """``add_parser`` / ``ArgumentParser`` keyword arguments for an ``examples:`` epilog."""
    body = "\n".join(f"  {line}" for line in lines)
    return {"epilog": f"examples:\n{body}", "formatter_class": argparse.RawDescriptionHelpFormatter}


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """``(("cert", "list"), parser)`` for ``parser`` itself and every (sub)command below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))
