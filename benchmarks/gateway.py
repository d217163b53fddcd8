"""The gateways people build today in front of agents: FastAPI + PyJWT + slowapi.

Both verify an ES256 bearer token on every request (PyJWT has no verified-token cache) and apply a
slowapi rate limit keyed by the token's subject (a limit that applies to every call but is never
reached, like the mesh variants).

- variant 6, ``create_gateway``: answers locally with the same JSON the bridge returns (no agent behind it);
- variant 8, ``create_forwarding_gateway``: forwards each request as ``agentmesh.v1.Agent/Invoke`` over one
  gRPC mutual-TLS channel (plain ``grpc.aio`` with the gateway's certificate, the agent's name checked) to the
  bare agent (variant 2's server, no interceptors) and maps the answer back to JSON: what users build instead
  of the bridge.
"""

# no ``from __future__ import annotations``: FastAPI reads the endpoint annotations at runtime

from collections.abc import Callable
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded

from agentmesh.v1 import agent_pb2, agent_pb2_grpc
from benchmarks.settings import GATEWAY_PATH

__all__ = ["UpstreamTLS", "create_forwarding_gateway", "create_gateway"]

FORWARD_TIMEOUT = 10.0  # seconds, per forwarded call


class PartIn(BaseModel):
    text: str = ""


class TaskIn(BaseModel):
    id: str = ""
    input: list[PartIn] = []


def _principal_key(request: Request) -> str:
    return str(request.state.principal)


Claims = Callable[..., dict[str, Any]]


def _app(public_key_pem: bytes, *, issuer: str, audience: str) -> tuple[FastAPI, Limiter, Claims]:
    """The app, its limiter and the token check the two gateways share."""
    key = load_pem_public_key(public_key_pem)
    assert isinstance(key, EllipticCurvePublicKey)
    limiter = Limiter(key_func=_principal_key)
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]

    def verified_claims(request: Request, authorization: str = Header(default="")) -> dict[str, Any]:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(status_code=401, detail="missing bearer token")
        try:
            claims: dict[str, Any] = jwt.decode(token, key, algorithms=["ES256"], audience=audience, issuer=issuer,
                                                options={"require": ["exp", "sub", "aud", "iss"]})
        except jwt.PyJWTError:
            raise HTTPException(status_code=401, detail="invalid token") from None
        request.state.principal = claims["sub"]
        return claims

    return app, limiter, verified_claims


def create_gateway(public_key_pem: bytes, *, issuer: str, audience: str, rate: str = "1000000/second") -> FastAPI:
    """Variant 6: verifies, limits and answers locally."""
    app, limiter, verified_claims = _app(public_key_pem, issuer=issuer, audience=audience)

    @app.post(GATEWAY_PATH)
    @limiter.limit(rate)
    async def invoke(request: Request, agent: str, task: TaskIn,
                     claims: dict[str, Any] = Depends(verified_claims)) -> dict[str, Any]:  # noqa: B008
        text = task.input[0].text if task.input else ""
        return {"taskId": task.id, "status": "TASK_STATUS_COMPLETED", "output": [{"text": text}]}

    return app


class UpstreamTLS:
    """The gateway's client certificate, key and trust bundle (PEM), and the agent's address and name."""

    def __init__(self, address: str, server_name: str, *, cert_chain: bytes, key: bytes, roots: bytes) -> None:
        self.address = address
        self.server_name = server_name
        self.credentials = grpc.ssl_channel_credentials(root_certificates=roots, private_key=key,
                                                        certificate_chain=cert_chain)

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(self.address, self.credentials, options=[
            ("grpc.ssl_target_name_override", self.server_name), ("grpc.default_authority", self.server_name)])


def create_forwarding_gateway(public_key_pem: bytes, upstream: UpstreamTLS, *, issuer: str, audience: str,
                              rate: str = "1000000/second") -> FastAPI:
    """Variant 8: verifies, limits, and forwards to the agent over gRPC mutual TLS (one channel, opened on the
    first request, in uvicorn's event loop)."""
    app, limiter, verified_claims = _app(public_key_pem, issuer=issuer, audience=audience)
    stubs: list[agent_pb2_grpc.AgentStub] = []

    def stub() -> agent_pb2_grpc.AgentStub:
        if not stubs:
            stubs.append(agent_pb2_grpc.AgentStub(upstream.channel()))
        return stubs[0]

    @app.post(GATEWAY_PATH)
    @limiter.limit(rate)
    async def invoke(request: Request, agent: str, task: TaskIn,
                     claims: dict[str, Any] = Depends(verified_claims)) -> dict[str, Any]:  # noqa: B008
        message = agent_pb2.Task(id=task.id, input=[agent_pb2.Part(text=p.text) for p in task.input])
        try:
            result = await stub().Invoke(message, timeout=FORWARD_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            raise HTTPException(status_code=502, detail=f"agent: {e.code().name}") from None
        return {"taskId": result.task_id, "status": agent_pb2.TaskStatus.Name(result.status),
                "output": [{"text": p.text} for p in result.output]}

    return app
