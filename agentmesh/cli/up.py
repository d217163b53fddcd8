"""``agentmesh up FILE``: start a whole mesh (control plane, agents, bridge) and supervise it."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from agentmesh.configfile import load_config
from agentmesh.runtime.supervisor import run_up

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("up", help="start the control plane, every agent and the bridge; Ctrl-C stops all")
    p.add_argument("config", type=Path, help="mesh config file")
    p.add_argument("--no-bridge", action="store_true", help="do not start the REST bridge")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    return asyncio.run(run_up(config, args.config, with_bridge=not args.no_bridge))
