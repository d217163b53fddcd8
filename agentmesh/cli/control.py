"""``agentmesh control --config FILE``: the control plane (token service) of a mesh."""

from __future__ import annotations

import argparse
import asyncio

from agentmesh.cli.errors import check_listen
from agentmesh.cli.usage import examples
from agentmesh.configfile import load_config
from agentmesh.runtime.control import start_control

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("control", help="run the control plane: issues bound agent tokens over mTLS",
                       **examples("agentmesh control --config mesh.yaml"))
    p.add_argument("--config", required=True, help="mesh config file")
    p.set_defaults(func=_run)


async def _serve(path: str) -> None:
    config = load_config(path)
    check_listen(config.control.address, "the control plane")
    if config.control.join_address:
        check_listen(config.control.join_address, "the control plane's join port")
    server = await start_control(config)
    sink = server.sink
    joins = f"; joins on {config.control.join_address}" if config.control.join_address else ""
    print(f"control plane ({config.spiffe_id(config.control.name)}) serving on {config.control.address}{joins}",
          flush=True)
    try:
        await server.serve_forever()
    finally:
        sink.shutdown(5)


def _run(args: argparse.Namespace) -> int:
    asyncio.run(_serve(args.config))
    return 0
