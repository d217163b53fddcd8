"""How the workflow agents call the next one: a downstream failure ends this call with UNAVAILABLE
naming the agent that failed and its status, instead of an anonymous UNKNOWN."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc

T = TypeVar("T")


async def ask(reply: Awaitable[T], context: grpc.aio.ServicerContext, agent: str) -> T:
    try:
        return await reply
    except grpc.aio.AioRpcError as e:
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"{agent} failed: {e.code().name}")
        raise  # abort() raises; this line is for type checkers
