"""How a unary call through the bridge ends when something else ends first (``gateway._unless_disconnected``).

The call object here behaves as grpc.aio's does: awaiting it awaits its task, cancelling it cancels that
task. The same paths over real sockets: ``test_bridge_calls.py`` (the client leaves mid-call, the agent
sees the cancellation) and ``test_bridge_shutdown.py`` (the bridge stopping).

* the client leaves: the call is cancelled, the request ends CANCELLED, no task is left behind;
* the request itself is cancelled (the server's grace period is over): the cancellation is passed on,
  even when the client left in the same turn of the loop, and the agent's call is cancelled too;
* the call is cancelled under the bridge (its connection closed: the agent was revoked, or its channel
  retired): the answer is the agent's going away, 503 UNAVAILABLE, never "the bridge is shutting down".
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import grpc
import pytest

from agentmesh.bridge.errors import HttpError
from agentmesh.bridge.gateway import _unless_disconnected
from agentmesh.bridge.server import AnswerAtGraceEnd


class Call:
    """A unary call that answers ``value`` after ``delay`` s, unless cancelled."""

    def __init__(self, delay: float, value: str = "reply") -> None:
        self.task = asyncio.ensure_future(self._run(delay, value))

    @staticmethod
    async def _run(delay: float, value: str) -> str:
        await asyncio.sleep(delay)
        return value

    def cancel(self) -> bool:
        return self.task.cancel()

    def __await__(self) -> Generator[Any, None, str]:
        return (yield from self.task.__await__())


def receiver(leaves_after: float | None = None, error: Exception | None = None) -> Callable[[], Awaitable[Any]]:
    """An ASGI ``receive`` once the body is read: a disconnect after ``leaves_after`` s (never: None)."""

    async def receive() -> dict[str, str]:
        if leaves_after is None:
            await asyncio.Event().wait()
        await asyncio.sleep(leaves_after or 0)
        if error is not None:
            raise error
        return {"type": "http.disconnect"}

    return receive


async def settled() -> set[asyncio.Task[Any]]:
    """The tasks still pending besides this one, once the loop has run what was ready."""
    for _ in range(3):
        await asyncio.sleep(0)
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


async def test_the_reply_comes_back_and_the_watcher_is_gone() -> None:
    assert await _unless_disconnected(Call(0.01), receiver(), "alpha") == "reply"
    assert not await settled()


@pytest.mark.parametrize("error", [None, RuntimeError("receive failed")])
async def test_the_client_leaving_cancels_the_call(error: Exception | None) -> None:
    call = Call(5)
    with pytest.raises(HttpError) as e:
        await _unless_disconnected(call, receiver(0.02, error), "alpha")
    assert e.value.code == grpc.StatusCode.CANCELLED and call.task.cancelled()
    assert not await settled()


async def test_a_cancelled_request_cancels_the_call_and_stays_cancelled() -> None:
    call = Call(5)
    request = asyncio.ensure_future(_unless_disconnected(call, receiver(), "alpha"))
    await asyncio.sleep(0.02)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert call.task.cancelled()


async def test_a_request_cancelled_as_its_client_leaves_is_still_cancelled() -> None:
    left = asyncio.Event()

    async def receive() -> dict[str, str]:
        await left.wait()
        return {"type": "http.disconnect"}

    request = asyncio.ensure_future(_unless_disconnected(Call(5), receive, "alpha"))
    await asyncio.sleep(0.02)
    left.set()  # the client goes in the same turn ...
    request.cancel()  # ... as the server's grace period ends
    with pytest.raises(asyncio.CancelledError):
        await request


async def test_a_call_cancelled_under_the_bridge_is_the_agent_going_away() -> None:
    call = Call(5)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await _unless_disconnected(call, receive, "alpha")
        except HttpError as e:
            await e.response()(scope, receive, send)

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.get_running_loop().call_later(0.02, call.cancel)  # what a connection closed under it does
    await AnswerAtGraceEnd(app)({"type": "http"}, receiver(), send)
    body = json.loads(b"".join(m.get("body", b"") for m in sent))
    assert sent[0]["status"] == 503 and "went away" in json.dumps(body) and "shutting down" not in json.dumps(body)
