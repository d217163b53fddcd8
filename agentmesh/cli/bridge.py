"""``agentmesh bridge --config FILE``: serve the REST bridge (HTTPS/JSON in front of the mesh)."""

from __future__ import annotations

import argparse
from pathlib import Path

from agentmesh.cli.agent import add_join_arguments, join_first
from agentmesh.cli.errors import check_listen
from agentmesh.cli.usage import examples
from agentmesh.configfile import load_config

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bridge", help="serve the REST bridge: HTTPS/JSON for external clients, gRPC to agents",
                       **examples("agentmesh bridge --config mesh.yaml",
                                  "agentmesh bridge --config mesh.yaml --listen 127.0.0.1:8443 --workers 2"))
    p.add_argument("--config", required=True, type=Path, help="mesh config file")
    p.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (default: bridge.listen)")
    p.add_argument("--insecure-http", action="store_true",
                   help="serve plain HTTP instead of HTTPS (tokens then cross the network in clear text)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes (default 1)")
    add_join_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from agentmesh.bridge import serve  # starlette/uvicorn only load for this command

    config = load_config(args.config)
    check_listen(args.listen or config.bridge.listen, "the bridge")  # uvicorn would log a traceback-like error
    join_first(args, config, config.bridge.name)
    serve(config, listen=args.listen, insecure_http=args.insecure_http, workers=args.workers)
    return 0
