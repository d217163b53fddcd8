"""``runtime/healthcheck.py``: the one health check of ``agentmesh up``, ``agentmesh status`` and ``/readyz``,
against a real gRPC health server and a real HTTP listener."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from agentmesh.runtime.healthcheck import SERVING, grpc_health, http_healthz


@contextlib.asynccontextmanager
async def serving(servicer: health_pb2_grpc.HealthServicer | None) -> AsyncIterator[str]:
    """A real grpc.aio server on a free port, serving ``servicer`` as its health service (None: none)."""
    server = grpc.aio.server()
    if servicer is not None:
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, health.aio.HealthServicer]]:
    servicer = health.aio.HealthServicer()
    async with serving(servicer) as address:
        yield address, servicer


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("status", "expected"), [
    (health_pb2.HealthCheckResponse.SERVING, SERVING),
    (health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING"),
])
async def test_the_serving_status(served: tuple[str, health.aio.HealthServicer], status: int, expected: str) -> None:
    address, servicer = served
    await servicer.set("", status)
    async with grpc.aio.insecure_channel(address) as channel:
        assert await grpc_health(channel, timeout=2) == expected


async def test_a_member_that_is_not_there_is_unreachable() -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{closed_port()}") as channel:
        assert await grpc_health(channel, timeout=0.5, wait_for_ready=False) == "unreachable"


async def test_another_failure_names_its_status() -> None:
    async with serving(None) as address, grpc.aio.insecure_channel(address) as channel:  # Check: UNIMPLEMENTED
        assert await grpc_health(channel, timeout=2) == "error: UNIMPLEMENTED"


class NewerHealth(health_pb2_grpc.HealthServicer):
    """A health server whose proto names more statuses than ours (proto3 enums are open: sent as is)."""

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=7)  # type: ignore[arg-type]


async def test_a_status_this_proto_does_not_name_is_not_serving() -> None:
    async with serving(NewerHealth()) as address, grpc.aio.insecure_channel(address) as channel:
        assert await grpc_health(channel, timeout=2) == "unknown status 7"


@pytest.mark.parametrize(("answer", "healthy"), [(b"HTTP/1.1 200 OK\r\n\r\n", True),
                                                 (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", False)])
async def test_healthz(answer: bytes, healthy: bool) -> None:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(reply, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await http_healthz(f"127.0.0.1:{port}") is healthy
    finally:
        server.close()
        await server.wait_closed()
    assert await http_healthz(f"127.0.0.1:{closed_port()}") is False
