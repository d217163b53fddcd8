"""Baseline: the ported TCK SUT (tck_sut.executor) served directly by the a2a-sdk 1.3.0, no mesh.

JSON-RPC at ``http://HOST:PORT/``, HTTP+JSON (REST) at ``http://HOST:PORT/`` (``/message:send``, ``/tasks/...``),
gRPC at ``HOST:GRPC_PORT``, the card at ``/.well-known/agent-card.json`` listing all three (JSON-RPC first),
as the TCK's python-sut does on a2a-sdk 0.3 (which served JSON-RPC only). No authentication is enforced,
as in the TCK's SUT ("Authentication schemes declared in Agent Card but not enforced").

    python sut_server.py --port 9999 --grpc-port 9998
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib

import grpc
import uvicorn
from a2a.server.request_handlers import DefaultRequestHandler, GrpcHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.types import a2a_pb2, a2a_pb2_grpc
from google.protobuf import json_format
from starlette.applications import Starlette
from tck_sut import TckCoreAgentExecutor

HERE = pathlib.Path(__file__).resolve().parent


def card(host: str, port: int, grpc_port: int) -> a2a_pb2.AgentCard:
    c = a2a_pb2.AgentCard()
    json_format.Parse((HERE / "card.json").read_text(), c)
    url = f"http://{host}:{port}"
    c.supported_interfaces.extend([
        a2a_pb2.AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0"),
        a2a_pb2.AgentInterface(url=url, protocol_binding="HTTP+JSON", protocol_version="1.0"),
        a2a_pb2.AgentInterface(url=f"{host}:{grpc_port}", protocol_binding="GRPC", protocol_version="1.0"),
    ])
    return c


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, default=9999)
    p.add_argument("--grpc-port", type=int, default=9998)
    p.add_argument("--grpc-url-scheme", default="http://",
                   help="prefix of the card's gRPC url (the TCK's grpc client needs grpc:// to parse it)")
    a = p.parse_args()
    agent_card = card(a.host, a.port, a.grpc_port)
    if a.grpc_url_scheme:
        agent_card.supported_interfaces[2].url = f"{a.grpc_url_scheme}{a.host}:{a.grpc_port}"
    handler = DefaultRequestHandler(TckCoreAgentExecutor(), InMemoryTaskStore(), agent_card)
    app = Starlette(routes=[*create_agent_card_routes(agent_card), *create_jsonrpc_routes(handler, "/"),
                            *create_rest_routes(handler)])
    server = grpc.aio.server()
    a2a_pb2_grpc.add_A2AServiceServicer_to_server(GrpcHandler(handler), server)
    server.add_insecure_port(f"127.0.0.1:{a.grpc_port}")
    await server.start()
    cfg = uvicorn.Config(app, host="127.0.0.1", port=a.port, log_level="warning")
    try:
        await uvicorn.Server(cfg).serve()
    finally:
        await server.stop(1)


if __name__ == "__main__":
    asyncio.run(main())
