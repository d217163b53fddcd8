"""Serving an agent: a grpc.aio server over mutual TLS with the mesh's server chain, health and reflection."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agentmesh.errors import ConfigError, Unavailable
from agentmesh.runtime.credentials import AgentIdentity

__all__ = ["MAX_CONCURRENT_STREAMS", "MeshServer", "hardening_options"]

AddServicer = Callable[[Any, grpc.aio.Server], None]



METADATA_LIMIT = 32 * 1024
#: HTTP/2 streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS; the mesh file's
#: ``max_concurrent_streams``); gRPC's own default is unbounded. A flood of streams opened and reset at once
#: ("rapid reset") stays this wide. grpcio's client does not queue calls past it: the server refuses them
#: (RST_STREAM REFUSED_STREAM) and the caller sees UNAVAILABLE, so it is set well above what one member
#: keeps in flight to another (agent calls can last seconds: 100 calls/s of 5 s each are 500 at once).
MAX_CONCURRENT_STREAMS = 1000
#: connections with no call for this long are closed (GOAWAY); a client reconnects when it next calls
MAX_CONNECTION_IDLE = 300.0


def hardening_options(max_concurrent_streams: int = MAX_CONCURRENT_STREAMS,
                      max_connection_idle: float = MAX_CONNECTION_IDLE) -> list[tuple[str, Any]]:
    """The gRPC server options that bound what one connection may cost: concurrent streams, idle
    connections, and pings (gRPC's keepalive enforcement, pinned here: a client that pings more often than
    every 5 min without calls gets GOAWAY ENHANCE_YOUR_CALM at the third such ping)."""
    if max_concurrent_streams < 1:
        raise ConfigError("max_concurrent_streams must be at least 1")
    return [
        ("grpc.max_concurrent_streams", max_concurrent_streams),
        ("grpc.max_connection_idle_ms", int(max_connection_idle * 1000)),
        ("grpc.http2.min_ping_interval_without_data_ms", 300_000),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.keepalive_permit_without_calls", 0),
    ]


class MeshServer:
    """One agent's gRPC server.

    Requires and verifies client certificates (re-read from disk for new handshakes; ``client_auth=False``
    only for the control plane's join port), serves ``grpc.health.v1`` and, with ``reflection``, gRPC
    server reflection listing the services registered by :meth:`add` (plus health and reflection): only
    behind a chain with a policy stage (:meth:`agentmesh.runtime.node.MeshNode.server`). It drains in-flight calls for
    ``grace`` seconds on stop / SIGTERM. Connections are not closed by age unless ``max_connection_age``
    is set: calls are re-checked against revocations while they run instead. Each connection has at most
    ``max_concurrent_streams`` calls open at once (:func:`hardening_options`); ``options`` may override any.
    """

    def __init__(
        self,
        identity: AgentIdentity,
        *,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        max_connection_age: float = 0.0,
        grace: float = 10.0,
        options: Sequence[tuple[str, Any]] = (),
        client_auth: bool = True,
        max_concurrent_streams: int = MAX_CONCURRENT_STREAMS,
        reflection: bool = False,
    ) -> None:
        self.identity = identity
        self.grace = grace
        self.client_auth = client_auth
        self.reflection = reflection
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        # room for a delegated call's metadata: up to 8 hop links (each carries its signer's certificate,
        # ~1.4 KB) beside the transaction token and the caller's token; gRPC's default soft limit is 8 KiB
        opts: list[tuple[str, Any]] = [("grpc.so_reuseport", 0), ("grpc.max_metadata_size", METADATA_LIMIT),
                                       ("grpc.absolute_max_metadata_size", METADATA_LIMIT),
                                       *hardening_options(max_concurrent_streams), *options]
        if max_connection_age > 0:
            opts += [("grpc.max_connection_age_ms", int(max_connection_age * 1000)),
                     ("grpc.max_connection_age_grace_ms", int(grace * 1000))]
        self.server = grpc.aio.server(interceptors=list(interceptors), options=opts)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port: int | None = None
        self._services: list[str] = []  # reported healthy
        self._served: dict[str, None] = {}  # registered, in order: what reflection lists
        self._reflecting = False

    def add(self, add_servicer: AddServicer, servicer: Any, *service_names: str) -> None:
        """Registers a servicer and the service names it reports healthy.

        e.g. ``add(agent_pb2_grpc.add_AgentServicer_to_server, MyAgent(), "agentmesh.v1.Agent")``
        """
        add_servicer(servicer, _Recording(self.server, self._served))
        self._services.extend(service_names)
        self._served.update(dict.fromkeys(service_names))

    @property
    def services(self) -> list[str]:
        """The services this server serves (what reflection lists): those added, health, reflection."""
        extra = [reflection.SERVICE_NAME] if self.reflection else []
        return sorted({*self._served, health.SERVICE_NAME, *extra})

    async def start(self, address: str = "127.0.0.1:0") -> int:
        if self.reflection and not self._reflecting:  # once every service is added: it lists them
            self._reflecting = True
            reflection.enable_server_reflection(self.services, self.server)
        try:
            port = int(self.server.add_secure_port(address,
                                                   self.identity.server_credentials(client_auth=self.client_auth)))
        except RuntimeError:  # grpcio >= 1.60 raises where it used to return 0
            port = 0
        if port == 0:
            raise Unavailable(f"cannot listen on {address} (in use, or not an address of this host)")
        await self.server.start()
        self.port = port
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        return port

    async def _set_health(self, status: int) -> None:
        for name in ("", *self._services):
            result = self.health.set(name, status)
            if asyncio.iscoroutine(result):
                await result

    async def stop(self, grace: float | None = None) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(self.grace if grace is None else grace)

    async def serve_forever(self) -> None:
        """Runs until SIGTERM/SIGINT, then drains in-flight calls within the grace period."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        waiter = asyncio.ensure_future(self.server.wait_for_termination())
        stop_wait = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({waiter, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.is_set():
            await self.stop()
        waiter.cancel()
        stop_wait.cancel()


class _Recording(grpc.aio.Server):
    """The server as an ``add_XServicer_to_server`` function sees it (the ``grpc.aio.Server`` it declares),
    noting the services it registers (generated code registers each with ``add_registered_method_handlers``
    or a service handler); the rest is the server's own."""

    def __init__(self, server: grpc.aio.Server, served: dict[str, None]) -> None:
        self._server = server
        self._served = served

    def add_registered_method_handlers(self, service: str,
                                       handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]) -> None:
        self._served[service] = None
        self._server.add_registered_method_handlers(service, handlers)

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        handlers = tuple(handlers)
        for handler in handlers:
            if isinstance(handler, grpc.ServiceRpcHandler):
                self._served[handler.service_name()] = None
        self._server.add_generic_rpc_handlers(handlers)

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return await self._server.wait_for_termination(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)
