"""``agentmesh agent --config FILE NAME``: run one agent of a mesh config (its ``app`` class)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from agentmesh.cli.errors import AppImportError, check_listen
from agentmesh.cli.usage import examples
from agentmesh.config import AgentConfig, MeshConfig
from agentmesh.configfile import load_config
from agentmesh.errors import MeshError
from agentmesh.runtime import evloop
from agentmesh.runtime.agent import run_agent
from agentmesh.runtime.app import load_object
from agentmesh.runtime.join import join

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("agent", help="run one agent named in the mesh config", **examples(
        "agentmesh agent summarizer --config mesh.yaml",
        "echo \"$JOIN_TOKEN\" | agentmesh agent summarizer --config mesh.yaml --join -",
    ))
    p.add_argument("name", help="agent name (agents.NAME in the config)")
    p.add_argument("--config", required=True, help="mesh config file")
    add_join_arguments(p)
    p.set_defaults(func=_run)


def add_join_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--join", metavar="TOKEN", help="join first with a one-time token (agentmesh cert join-token): "
                   "the key is made here, only a CSR travels; '-' reads the token from stdin")
    p.add_argument("--bundle", type=Path, help="the mesh trust bundle for --join (default: bundle.pem in the "
                   "member's identity directory)")


def join_first(args: argparse.Namespace, config: MeshConfig, name: str) -> None:
    """Joins the mesh when ``--join`` was given (before the member starts)."""
    if not args.join:
        return
    token = sys.stdin.readline() if args.join == "-" else args.join
    serial = asyncio.run(join(config, name, token, bundle=args.bundle))
    print(f"{name} joined the mesh: certificate serial {serial:x} in {config.identity_dir(name)}", flush=True)


def import_app(agent: AgentConfig) -> None:
    """Imports the agent's app before anything starts, so that an app raising at import is one line
    naming the module and the exception (:class:`AppImportError`), not a traceback."""
    if agent.app is None:
        return
    try:
        load_object(agent.app)
    except MeshError:
        raise
    except Exception as e:
        raise AppImportError(agent.app, e) from e


def _run(args: argparse.Namespace) -> int:
    loop = evloop.choose()  # first: a bad AGENTMESH_LOOP is one line, before a join uses up its token
    config = load_config(args.config)
    agent = config.agent(args.name)  # a clear error for an unknown name, before anything starts
    import_app(agent)
    check_listen(agent.bind_address, f"agent {args.name}")
    join_first(args, config, args.name)
    evloop.run(run_agent(config, args.name), loop)
    return 0
