"""``agentmesh agent --config FILE NAME``: run one agent of a mesh config (its ``app`` class)."""

from __future__ import annotations

import argparse
import asyncio

from agentmesh.configfile import load_config
from agentmesh.runtime.agent import run_agent

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("agent", help="run one agent named in the mesh config")
    p.add_argument("name", help="agent name (agents.NAME in the config)")
    p.add_argument("--config", required=True, help="mesh config file")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    config.agent(args.name)  # a clear error for an unknown name, before anything starts
    asyncio.run(run_agent(config, args.name))
    return 0
