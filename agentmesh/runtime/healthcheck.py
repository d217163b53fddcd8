"""Asking a member whether it serves: gRPC health over mutual TLS, and the bridge's ``/healthz``.

One check for everyone who asks: ``agentmesh up`` waiting for its children, ``agentmesh status``, and the
bridge's ``/readyz`` (its agents).
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["SERVING", "grpc_health", "http_healthz"]

SERVING = "SERVING"


async def grpc_health(channel: grpc.aio.Channel, *, timeout: float, wait_for_ready: bool | None = None) -> str:
    """The member's serving status (``SERVING``, ``NOT_SERVING``, ...), ``unreachable`` when it could not
    be reached in ``timeout`` seconds, else ``error: <status code>``."""
    try:
        res = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout,
                                                              wait_for_ready=wait_for_ready)
    except grpc.aio.AioRpcError as e:
        return "unreachable" if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) \
            else f"error: {e.code().name}"
    try:
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(res.status))
    except ValueError:  # a value this proto does not name (another server's newer health proto): not serving
        return f"unknown status {res.status}"


async def http_healthz(address: str, *, bundle: Path | None = None, timeout: float = 1.0) -> bool:
    """Whether ``GET /healthz`` at ``host:port`` answers 200 (over TLS trusting ``bundle`` when given: a
    probe of the caller's own child on loopback, so the host name is not checked)."""
    host, _, port = address.rpartition(":")
    ctx = None
    if bundle is not None:
        ctx = ssl.create_default_context(cafile=str(bundle))
        ctx.check_hostname = False
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port), ssl=ctx), timeout)
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), timeout)
        writer.close()
        return b" 200 " in line
    except (OSError, TimeoutError, ssl.SSLError):
        return False
