"""``agentmesh control --config FILE``: the control plane (token service) of a mesh."""

from __future__ import annotations

import argparse

from agentmesh.cli.errors import check_listen
from agentmesh.cli.usage import examples
from agentmesh.configfile import load_config
from agentmesh.runtime import evloop
from agentmesh.runtime.control import start_control
from agentmesh.runtime.gcfreeze import freeze_after_startup

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("control", help="run the control plane: issues bound agent tokens over mTLS",
                       **examples("agentmesh control --config mesh.yaml"))
    p.add_argument("--config", required=True, help="mesh config file")
    p.set_defaults(func=_run)


async def _serve(path: str) -> None:
    config = load_config(path)
    check_listen(config.control.bind_address, "the control plane")
    if config.control.join_bind_address:
        check_listen(config.control.join_bind_address, "the control plane's join port")
    server = await start_control(config)
    freeze_after_startup()
    sink = server.sink
    c = config.control
    joins = f"; joins on {c.join_bind_address}" if c.join_bind_address else ""
    on = c.address if c.bind_address == c.address else f"{c.bind_address} (dialled as {c.address})"
    print(f"control plane ({config.spiffe_id(c.name)}) serving on {on}{joins}", flush=True)
    try:
        await server.serve_forever()
    finally:
        sink.shutdown(5)


def _run(args: argparse.Namespace) -> int:
    loop = evloop.choose()  # (before the coroutine: a bad value is one line)
    evloop.run(_serve(args.config), loop)
    return 0
