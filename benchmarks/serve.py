"""Every benchmark server, one per process: ``python -m benchmarks.serve KIND [options]``.

    grpc-insecure  variant 1: bare grpc.aio, no TLS
    grpc-mtls      variant 2: MeshServer (mutual TLS) with interceptors=()
    agent          variants 3/4: a MeshNode with the whole server chain (``--redis URL``: Redis limiter;
                   ``--stages N`` / ``--tweak``: parts of the chain only, for the profiler's ablation)
    control        the control plane (token service) of the mesh
    bridge         variant 5: agentmesh.bridge.serve(), plain HTTP on loopback
    gateway        variant 6: FastAPI + PyJWT + slowapi under uvicorn, with the bridge's uvicorn settings
    gateway-forward  variant 8: the same, forwarding each request over gRPC mTLS to ``--upstream`` (variant 2's
                   bare agent), with the identity of the mesh member ``gateway``
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from agentmesh.configfile import load_config
from agentmesh.interceptors.base import ServerChain
from agentmesh.interceptors.chain import server_chain
from agentmesh.ratelimit import build_limiter
from agentmesh.runtime import evloop
from agentmesh.runtime.control import start_control
from agentmesh.runtime.credentials import AgentIdentity
from agentmesh.runtime.gcfreeze import freeze_after_startup
from agentmesh.runtime.node import MeshNode
from agentmesh.runtime.server import MeshServer
from agentmesh.v1 import agent_pb2_grpc
from benchmarks import timing
from benchmarks.echo import Echo
from benchmarks.meshdir import AGENT, GATEWAY, GATEWAY_AUDIENCE, GATEWAY_ISSUER, TWEAKS, apply_tweaks

__all__ = ["UVICORN_SETTINGS", "main"]

#: uvicorn settings of the FastAPI gateway when agentmesh.bridge (whose settings it copies) is missing
UVICORN_SETTINGS: dict[str, Any] = {"workers": 1, "log_level": "info", "access_log": False}
SERVICE = "agentmesh.v1.Agent"


async def _until_signal(stop: Callable[[], Awaitable[object]]) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await stop()


async def grpc_insecure(listen: str) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    agent_pb2_grpc.add_AgentServicer_to_server(Echo(), server)
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    await _until_signal(lambda: server.stop(0.5))


async def grpc_mtls(config_path: str, listen: str) -> None:
    config = load_config(config_path)
    identity = AgentIdentity(config.identity_dir(AGENT), config.trust_domain)
    server = MeshServer(identity, interceptors=(), max_connection_age=config.max_connection_age,
                        grace=config.grace_period)
    server.add(agent_pb2_grpc.add_AgentServicer_to_server, Echo(), SERVICE)
    await server.start(listen)
    await server.serve_forever()


def _chain_prefix(node: MeshNode, stages: int) -> MeshServer:
    """A server with only the first ``stages`` stages of the chain (the profiler's ablation):
    1 = the audit span alone, 2 = + admission (certificate, token, policy), 3 = + rate limit, 4 = + payload
    guard (the A2A task-owner stage applies to A2A methods only)."""
    config = node.config
    (chain,) = server_chain(node.name, sink=node.sink, audit_required=config.audit.required,
                            identities=node.identities, checks=node.checks,
                            snapshot=lambda: node.trust.snapshot, policy=node.policy,
                            limiter=node.limiter, guard=node.guard, me=str(node.spiffe_id))
    assert isinstance(chain, ServerChain)
    interceptors = [] if stages <= 0 else [ServerChain(chain.around, chain.stages[: stages - 1])]
    return MeshServer(node.identity, interceptors=interceptors, max_connection_age=config.max_connection_age,
                      grace=config.grace_period)


async def agent(config_path: str, name: str, redis: str | None, check_every: float, *,
                stages: int | None = None, tweaks: Sequence[str] = ()) -> None:
    config = apply_tweaks(load_config(config_path), tweaks)
    limiter = None
    if redis:
        limiter = build_limiter(dataclasses.replace(config.rate_limits, backend=redis))
    node = MeshNode(config, name, limiter=limiter, check_every=check_every)
    await node.start()
    server = node.server() if stages is None else _chain_prefix(node, stages)
    server.add(agent_pb2_grpc.add_AgentServicer_to_server, Echo(), SERVICE)
    await server.start(node.address)
    freeze_after_startup()  # as `agentmesh agent` does
    try:
        await server.serve_forever()
    finally:
        await node.close()


async def control(config_path: str) -> None:
    server = await start_control(load_config(config_path))
    sink = server.sink
    try:
        await server.serve_forever()
    finally:
        sink.shutdown(2)


def bridge(config_path: str, listen: str) -> None:
    from agentmesh.bridge import serve  # imported here: run.py checks first that it exists

    serve(load_config(config_path), listen=listen, insecure_http=True, workers=1)


def gateway_uvicorn_options(config_path: str | None, listen: str) -> dict[str, Any]:
    """The bridge's own uvicorn settings (agentmesh.bridge.server.uvicorn_options), plain HTTP on ``listen``."""
    host, _, port = listen.rpartition(":")
    try:
        from agentmesh.bridge.server import uvicorn_options
    except ImportError:
        return {**UVICORN_SETTINGS, "host": host, "port": int(port)}
    assert config_path is not None, "--config is needed to copy the bridge's uvicorn settings"
    opts: dict[str, Any] = uvicorn_options(load_config(config_path), listen=listen, insecure_http=True)
    return opts


def gateway(config_path: str | None, listen: str, public_key: str) -> None:
    import uvicorn

    from benchmarks.gateway import create_gateway

    with open(public_key, "rb") as f:
        app = create_gateway(f.read(), issuer=GATEWAY_ISSUER, audience=GATEWAY_AUDIENCE)
    opts = gateway_uvicorn_options(config_path, listen)
    print(f"uvicorn settings: {opts}", flush=True)
    uvicorn.run(app, **opts)


def gateway_forward(config_path: str, listen: str, public_key: str, upstream: str) -> None:
    import uvicorn

    from benchmarks.gateway import UpstreamTLS, create_forwarding_gateway

    config = load_config(config_path)
    ident = config.identity_dir(GATEWAY)
    tls = UpstreamTLS(upstream, AGENT, cert_chain=(ident / "cert.pem").read_bytes(),
                      key=(ident / "key.pem").read_bytes(), roots=(ident / "bundle.pem").read_bytes())
    with open(public_key, "rb") as f:
        app = create_forwarding_gateway(f.read(), tls, issuer=GATEWAY_ISSUER, audience=GATEWAY_AUDIENCE)
    opts = gateway_uvicorn_options(config_path, listen)
    print(f"uvicorn settings: {opts}; forwarding to {upstream} (mTLS, server name {AGENT})", flush=True)
    uvicorn.run(app, **opts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("grpc-insecure", "grpc-mtls", "agent", "control", "bridge", "gateway",
                                    "gateway-forward"))
    p.add_argument("--config", help="mesh.yaml")
    p.add_argument("--listen", help="host:port")
    p.add_argument("--name", default=AGENT, help="agent name (kind agent)")
    p.add_argument("--redis", help="redis:// URL of the rate-limit backend (kind agent)")
    p.add_argument("--check-every", type=float, default=1.0, help="identity file check interval, s (kind agent)")
    p.add_argument("--stages", type=int, help="serve only the first N stages of the server chain (kind agent)")
    p.add_argument("--tweak", action="append", default=[], choices=TWEAKS, help="switch part of the chain off")
    p.add_argument("--public-key", help="PEM public key of the gateway's token issuer (kinds gateway*)")
    p.add_argument("--upstream", help="host:port of the bare mTLS agent (kind gateway-forward)")
    p.add_argument("--uvloop", action="store_true", help="serve on uvloop (kinds grpc-*: variant 9; agent and "
                   "control run on the loop `agentmesh agent` runs on, agentmesh.runtime.evloop)")
    a = p.parse_args(argv)
    timing.install()  # (only with AGENTMESH_BENCH_TIMING: insitu.py)
    if a.uvloop:
        import uvloop
        uvloop.install()
    if a.kind == "grpc-insecure":
        asyncio.run(grpc_insecure(a.listen))
    elif a.kind == "grpc-mtls":
        asyncio.run(grpc_mtls(a.config, a.listen))
    elif a.kind == "agent":
        loop = evloop.choose()
        evloop.run(agent(a.config, a.name, a.redis, a.check_every, stages=a.stages, tweaks=a.tweak), loop)
    elif a.kind == "control":
        loop = evloop.choose()
        evloop.run(control(a.config), loop)
    elif a.kind == "bridge":
        bridge(a.config, a.listen)
    elif a.kind == "gateway":
        gateway(a.config, a.listen, a.public_key)
    else:
        gateway_forward(a.config, a.listen, a.public_key, a.upstream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
