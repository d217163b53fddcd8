"""The calls a server is running, so a revocation can end them while they run.

A connection that was verified once is not trusted for its whole life: when the trust data changes
(a certificate, a member or a token revoked) or is confirmed by a heartbeat, :meth:`ActiveCalls.sweep`
asks a pure decision about every call in flight and ends the refused ones with that decision's error
(e.g. UNAUTHENTICATED), long-lived streams included. Connection age alone never cuts a call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agentmesh.context import CallContext
from agentmesh.errors import MeshError

__all__ = ["ActiveCalls"]

#: (a call in flight) -> the error that ends it, or None to let it run
Refusal = Callable[[CallContext], MeshError | None]


class ActiveCalls:
    """Calls in flight on one server (registered by the server chain), by the task serving each."""

    def __init__(self) -> None:
        self._calls: dict[asyncio.Task[object], CallContext] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, call: CallContext) -> asyncio.Task[object] | None:
        task = asyncio.current_task()
        if task is not None:
            self._calls[task] = call
        return task

    def discard(self, task: asyncio.Task[object] | None) -> None:
        if task is not None:
            self._calls.pop(task, None)

    def sweep(self, refusal: Refusal) -> int:
        """Ends every call that ``refusal`` refuses now; returns how many (call on the server's loop)."""
        ended = 0
        for task, call in list(self._calls.items()):
            if call.ended_by is not None or call.peer is None:
                continue
            error = refusal(call)
            if error is not None:
                call.ended_by = error
                task.cancel()
                ended += 1
        return ended
