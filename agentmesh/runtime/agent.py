"""Running one agent of a mesh config as a process: ``agentmesh agent --config FILE NAME``."""

from __future__ import annotations

import logging

from agentmesh.config import MeshConfig
from agentmesh.errors import ConfigError
from agentmesh.runtime.app import load_object, servicer_for
from agentmesh.runtime.gcfreeze import freeze_after_startup
from agentmesh.runtime.node import MeshNode

__all__ = ["run_agent"]

log = logging.getLogger("agentmesh.agent")


async def run_agent(config: MeshConfig, name: str) -> None:
    """Serves agent ``name`` (its ``app`` class) until SIGTERM, then drains and stops."""
    spec = config.agent(name)
    if spec.app is None:
        raise ConfigError(f"agents.{name}.app: required to run the agent (module:Class)")
    load_object(spec.app)  # an import error is reported before the node connects
    node = MeshNode(config, name)
    server = None
    try:
        await node.start()
        servicer, regs = servicer_for(spec, node)
        server = node.server()
        for reg in regs:
            server.add(reg.add, servicer, reg.service)
        await server.start(spec.bind_address)
        freeze_after_startup()
        on = spec.address if spec.bind_address == spec.address else f"{spec.bind_address} (dialled as {spec.address})"
        print(f"agent {name} ({node.spiffe_id}) serving on {on}", flush=True)
        await server.serve_forever()
    finally:
        if server is not None:
            await server.stop(0)  # a no-op after a drained SIGTERM stop; ends a cancelled server
        await node.close()
