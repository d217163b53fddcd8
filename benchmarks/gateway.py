"""Variant 6: the gateway people build today in front of agents: FastAPI + PyJWT + slowapi.

It verifies an ES256 bearer token on every request (PyJWT has no verified-token cache), applies
a slowapi rate limit keyed by the token's subject (a limit that applies to every call but is never
reached, like the mesh variants), and answers locally with the same JSON the bridge returns.
"""

# no ``from __future__ import annotations``: FastAPI reads the endpoint annotations at runtime

from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded

from benchmarks.settings import GATEWAY_PATH

__all__ = ["create_gateway"]


class PartIn(BaseModel):
    text: str = ""


class TaskIn(BaseModel):
    id: str = ""
    input: list[PartIn] = []


def _principal_key(request: Request) -> str:
    return str(request.state.principal)


def create_gateway(public_key_pem: bytes, *, issuer: str, audience: str, rate: str = "1000000/second") -> FastAPI:
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

    @app.post(GATEWAY_PATH)
    @limiter.limit(rate)
    async def invoke(request: Request, agent: str, task: TaskIn,
                     claims: dict[str, Any] = Depends(verified_claims)) -> dict[str, Any]:  # noqa: B008
        text = task.input[0].text if task.input else ""
        return {"taskId": task.id, "status": "TASK_STATUS_COMPLETED", "output": [{"text": text}]}

    return app
