"""``agentmesh up FILE``: start a whole mesh (control plane, agents, bridge) and supervise it."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from agentmesh.cli.errors import check_listen
from agentmesh.cli.usage import examples
from agentmesh.config import MeshConfig
from agentmesh.configfile import load_config
from agentmesh.runtime.runlogs import KEEP_RUNS
from agentmesh.runtime.supervision import RestartPolicy
from agentmesh.runtime.supervisor import run_up

__all__ = ["register"]

_DEFAULTS = RestartPolicy()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "up", help="start the control plane, every agent and the bridge, and keep them running; Ctrl-C stops all",
        description="Starts the control plane, the agents and the bridge as child processes and supervises them.\n\n"
                    "A child that crashes is restarted with backoff (one line says so); one that keeps crashing\n"
                    "(--max-crashes within --crash-window) stops the mesh, and up exits with status 1. Ctrl-C or\n"
                    "SIGTERM stops the mesh in order: the bridge, the agents from the edge inward (who may call\n"
                    "whom, from the policy), the control plane, each draining its calls for grace_period; a\n"
                    "second Ctrl-C stops everything at once. Children die with up, even on kill -9. Each run logs\n"
                    "into a fresh directory, <ca>/../logs/<run>/ (<ca>/../logs/NAME.log follows the current run);\n"
                    "agentmesh status reports on the running mesh.\n\n"
                    "Every member serves Prometheus metrics: where the config's metrics section says, else on a\n"
                    "free loopback port each, kept across restarts; the table shows them, and agentmesh top\n"
                    "FILE finds them (docs/OBSERVABILITY.md).",
        **examples("agentmesh up mesh.yaml",
                   "agentmesh up mesh.yaml --no-bridge --max-crashes 3 --crash-window 30"))
    p.add_argument("config", type=Path, help="mesh config file")
    p.add_argument("--no-bridge", action="store_true", help="do not start the REST bridge")
    p.add_argument("--max-crashes", type=int, default=_DEFAULTS.max_crashes, metavar="N",
                   help=f"give up when a child crashes N times within the crash window "
                        f"(default {_DEFAULTS.max_crashes})")
    p.add_argument("--crash-window", type=float, default=_DEFAULTS.window, metavar="SECONDS",
                   help=f"the crash window (default {_DEFAULTS.window:g})")
    p.add_argument("--no-metrics", action="store_true",
                   help="no metrics endpoints for the members the config's metrics section does not name")
    p.add_argument("--keep-logs", type=int, default=KEEP_RUNS, metavar="RUNS",
                   help=f"log directories of earlier runs to keep (default {KEEP_RUNS})")
    p.set_defaults(func=_run)


def _preflight(config: MeshConfig, with_bridge: bool) -> None:
    """One clear line for an address another process holds (a mesh already running, or the orphans of an
    older ``up``) before anything starts: its health probe could otherwise answer for our child."""
    check_listen(config.control.bind_address, f"control {config.control.name}")
    if config.control.join_bind_address:
        check_listen(config.control.join_bind_address, f"control {config.control.name} (joins)")
    for name, agent in config.agents.items():
        check_listen(agent.bind_address, f"agent {name}")
    if with_bridge:
        check_listen(config.bridge.listen, f"bridge {config.bridge.name}")
    for name in config.members():
        address = config.metrics_address(name)
        if address is not None and (with_bridge or name != config.bridge.name):
            check_listen(address, f"metrics of {name}")


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    restart = RestartPolicy(max_crashes=args.max_crashes, window=args.crash_window)
    _preflight(config, not args.no_bridge)
    return asyncio.run(run_up(config, args.config, with_bridge=not args.no_bridge, restart=restart,
                              keep_runs=args.keep_logs, metrics=not args.no_metrics))
