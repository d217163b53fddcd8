"""A real mesh behind a real bridge for the bridge tests: CA, control plane, agents over mTLS serving
agentmesh.v1.Agent and the test service bridgetest.v1.Probe, and uvicorn over HTTPS on port 0."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ssl
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import httpx
import uvicorn
from google.protobuf import empty_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from meshkit import free_port, write_mesh
from starlette.applications import Starlette
from support import EchoAgent

from agentmesh.bridge import create_app
from agentmesh.bridge.server import uvicorn_options
from agentmesh.config import MeshConfig
from agentmesh.configfile import load_config
from agentmesh.context import current_call
from agentmesh.pki import CertificateAuthority, write_identity
from agentmesh.runtime.control import start_control
from agentmesh.runtime.node import MeshNode
from agentmesh.runtime.server import MeshServer
from agentmesh.tokens import TokenAuthority
from agentmesh.v1 import agent_pb2_grpc

PROTOS = Path(__file__).parent / "protos"
PROBE_MODULE = "bridgetest.v1.probe_pb2"
AGENT_MODULE = "agentmesh.v1.agent_pb2"
SECRET_KEYS = ("authorization", "txn-token", "txn-links")


def generate_probe(out: Path) -> tuple[ModuleType, ModuleType]:
    """Compiles probe.proto into ``out`` (put on sys.path) and imports it."""
    from google.api import annotations_pb2
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    api = Path(annotations_pb2.__file__).parent.parent.parent
    rc = protoc.main(["protoc", f"-I{PROTOS}", f"-I{include}", f"-I{api}", f"--python_out={out}",
                      f"--grpc_python_out={out}", "bridgetest/v1/probe.proto"])
    assert rc == 0, "protoc failed"
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    return importlib.import_module(PROBE_MODULE), importlib.import_module(PROBE_MODULE + "_grpc")


def probe_modules() -> tuple[Any, Any]:
    return importlib.import_module(PROBE_MODULE), importlib.import_module(PROBE_MODULE + "_grpc")


class ProbeServicer:
    """bridgetest.v1.Probe: echoes what arrived, fails on request, sleeps, streams; records cancellations."""

    def __init__(self, name: str) -> None:
        self.pb, _ = probe_modules()
        self.name = name
        self.calls = 0
        self.cancelled = asyncio.Event()
        self.last_metadata: dict[str, str] = {}

    def _reply(self, context: grpc.aio.ServicerContext, **kw: Any) -> Any:
        call = current_call()
        md = {k: ("<present>" if k in SECRET_KEYS else v) for k, v in context.invocation_metadata()
              if isinstance(v, str)}
        self.last_metadata = md
        return self.pb.EchoReply(metadata=md, principal=call.principal or "", chain=list(call.chain),
                                 peer=call.peer_spiffe_id or "", **kw)

    async def Echo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.calls += 1
        return self._reply(context, name=request.name, payload=request.payload)

    async def Get(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.calls += 1
        text = f"id={request.id} verbose={request.verbose} fields={','.join(request.fields)} " \
               f"limit={request.limit} color={request.color}"
        return self._reply(context, name=text)

    async def Put(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.calls += 1
        return self._reply(context, name=request.name, payload=request.payload)

    async def Fail(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.calls += 1
        code = next(c for c in grpc.StatusCode if c.value[0] == request.code)
        if request.with_details:
            status = status_pb2.Status(code=request.code, message=request.message)
            status.details.add().Pack(error_details_pb2.ErrorInfo(reason="PROBE", domain="bridgetest"))
            status.details.add().Pack(error_details_pb2.DebugInfo(detail="Traceback: secret internals"))
            await context.abort_with_status(rpc_status.to_status(status))
        await context.abort(code, request.message)

    async def Slow(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.calls += 1
        try:
            await asyncio.sleep(request.seconds)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return self._reply(context, name="slept")

    async def Ticks(self, request: Any, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        self.calls += 1
        try:
            for n in range(1, request.count + 1):
                if n == request.fail_at:
                    await context.abort(grpc.StatusCode.ABORTED, f"tick {n} failed")
                yield self.pb.Tick(n=n)
                await asyncio.sleep(request.interval)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def Upload(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.pb.Tick(n=0)

    async def Ping(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return empty_pb2.Empty()


A2A_SERVICE = "lf.a2a.v1.A2AService"
A2A_MODULE = "a2a.types.a2a_pb2"
EXAMPLE_CARD = Path(__file__).parents[2] / "examples" / "a2a" / "card.json"


class _Registry:
    """Stands in for a grpc server to catch the method handlers a generated ``add_*_to_server`` registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers.update(handlers)


class A2AAgent:
    """The STOCK a2a-sdk gRPC server (``GrpcHandler`` + ``DefaultRequestHandler``, examples/a2a's executor
    and card) behind the mesh. One shim around its method handlers, none in it: the a2a-sdk 1.3.0 server
    sends no response metadata, so the shim records what metadata arrived and answers the extensions it
    was asked for as activated (``a2a-extensions`` in the initial metadata), as an extension-aware agent
    does; everything else is the SDK's."""

    def __init__(self) -> None:
        from a2a.server.request_handlers import DefaultRequestHandler, GrpcHandler
        from a2a.server.tasks import InMemoryTaskStore

        from agentmesh.a2a.sdk import card_from_json
        from examples.a2a.travel import executor

        class A2A(GrpcHandler):  # type: ignore[misc]
            pass

        card = card_from_json(EXAMPLE_CARD.read_text(), str(EXAMPLE_CARD))
        self.servicer = A2A(DefaultRequestHandler(executor, InMemoryTaskStore(), card))
        self.metadata: list[dict[str, str]] = []  # per call, secrets masked
        #: a streaming call ended: for a task still working, only its client going away ends it
        self.stream_ended = asyncio.Event()

    def add_to_server(self, servicer: Any, server: Any) -> None:
        from a2a.types import a2a_pb2_grpc

        registry = _Registry()
        a2a_pb2_grpc.add_A2AServiceServicer_to_server(servicer, registry)
        handlers = {name: self._activating(h) for name, h in registry.handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(A2A_SERVICE, handlers),))
        server.add_registered_method_handlers(A2A_SERVICE, handlers)

    def _activated(self, context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...]:
        md = [(k, v) for k, v in context.invocation_metadata() or () if isinstance(v, str)]
        self.metadata.append({k: ("<present>" if k in SECRET_KEYS else v) for k, v in md})
        asked = [v for k, v in md if k == "a2a-extensions"]
        return (("a2a-extensions", ", ".join(asked)),) if asked else ()

    def _activating(self, handler: Any) -> Any:
        opts = {"request_deserializer": handler.request_deserializer,
                "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                activated = self._activated(context)
                if activated:
                    await context.send_initial_metadata(activated)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, **opts)
        inner_stream = handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
            activated = self._activated(context)
            if activated:
                await context.send_initial_metadata(activated)
            # grpc's done callback: the SDK's handler ends quietly when its call is cancelled
            context.add_done_callback(lambda _: self.stream_ended.set())
            async for item in inner_stream(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(stream, **opts)


@dataclass
class BridgeMesh:
    root: Path
    config: MeshConfig
    authority: TokenAuthority
    url: str
    client: httpx.AsyncClient
    app: Starlette
    nodes: dict[str, MeshNode] = field(default_factory=dict)
    probes: dict[str, ProbeServicer] = field(default_factory=dict)
    servers: dict[str, MeshServer] = field(default_factory=dict)
    a2a: dict[str, A2AAgent] = field(default_factory=dict)

    @property
    def bundle(self) -> Path:
        return self.config.identity_dir("bridge") / "bundle.pem"

    def token(self, sub: str = "alice@example.org", roles: Sequence[str] = ("client",), **kw: Any) -> str:
        return self.authority.issue(sub=sub, roles=list(roles), audience=self.config.tokens.audience,
                                    ttl=kw.pop("ttl", 600), **kw)

    def auth(self, sub: str = "alice@example.org", roles: Sequence[str] = ("client",)) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub, roles)}"}


def tls_context(bundle: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(bundle))


@contextlib.asynccontextmanager
async def serve_app(app: Starlette, config: MeshConfig, **kw: Any) -> AsyncIterator[str]:
    """uvicorn with the bridge's own options, in this event loop, on a free port; yields the base URL."""
    port = free_port()
    opts = uvicorn_options(config, listen=f"127.0.0.1:{port}", **kw)
    opts.pop("workers")
    server = uvicorn.Server(uvicorn.Config(app, **opts))
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn did not start")
        await asyncio.sleep(0.01)
    try:
        yield f"{'https' if 'ssl_certfile' in opts else 'http'}://localhost:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def running_bridge(root: Path, agents: dict[str, dict[str, Any]], *, serve: Sequence[str],
                         leaf_ttl: float = 86400.0, a2a: Sequence[str] = (),
                         **sections: Any) -> AsyncIterator[BridgeMesh]:
    """A mesh of ``agents`` (those in ``serve`` running Agent + Probe, those in ``a2a`` the stock a2a-sdk
    server: :class:`A2AAgent`) and the bridge in front of it."""
    _, probe_grpc = probe_modules()
    path = write_mesh(root, agents, leaf_ttl=leaf_ttl, **sections)
    ca = CertificateAuthority.load(root / "ca")
    write_identity(ca.issue("bridge", dns=["localhost"], ttl=leaf_ttl),  # HTTPS name too
                   root / "identities" / "bridge")
    config = load_config(path)
    control = await start_control(config)
    control_sink = control.sink
    authority = TokenAuthority.load(config.ca_dir, issuer=config.tokens.issuer)
    nodes: dict[str, MeshNode] = {}
    servers: dict[str, MeshServer] = {}
    probes: dict[str, ProbeServicer] = {}
    try:
        for name in serve:
            node = nodes[name] = MeshNode(config, name, check_every=0)
            await node.start(timeout=10)
            server = servers[name] = node.server(grace=0.2)
            server.add(agent_pb2_grpc.add_AgentServicer_to_server, EchoAgent(name), "agentmesh.v1.Agent")
            probe = probes[name] = ProbeServicer(name)
            server.add(probe_grpc.add_ProbeServicer_to_server, probe, "bridgetest.v1.Probe")
            await server.start(node.address)
        a2a_agents: dict[str, A2AAgent] = {}
        for name in a2a:
            node = nodes[name] = MeshNode(config, name, check_every=0)
            await node.start(timeout=10)
            server = servers[name] = node.server(grace=0.2)
            agent = a2a_agents[name] = A2AAgent()
            server.add(agent.add_to_server, agent.servicer, A2A_SERVICE)
            await server.start(node.address)
        bridge = nodes["bridge"] = MeshNode(config, "bridge", check_every=0)
        await bridge.start(timeout=10)
        app = create_app(config, node=bridge)
        async with serve_app(app, config) as url, httpx.AsyncClient(
                base_url=url, verify=tls_context(config.identity_dir("bridge") / "bundle.pem"), timeout=10) as client:
            yield BridgeMesh(root, config, authority, url, client, app, nodes, probes, servers, a2a_agents)
    finally:
        for server in servers.values():
            await server.stop(0)
        for node in nodes.values():
            await node.close()
        await control.stop(0)
        control_sink.shutdown(2)


__all__ = ["A2A_MODULE", "A2A_SERVICE", "AGENT_MODULE", "PROBE_MODULE", "A2AAgent", "BridgeMesh", "ProbeServicer",
           "generate_probe", "running_bridge", "serve_app", "tls_context"]
