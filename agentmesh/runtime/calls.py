"""Calls whose start waits for this member's own token, as whole grpc.aio call objects meanwhile.

A mesh channel starts a call at once when the member's token is at hand (the steady state: the stub
gets grpc.aio's own call object). When it is not (the member's first call, right after a certificate
renewal, in the token's refresh window) the stub gets one of the classes below: a subclass of
``grpc.aio.UnaryUnaryCall`` (or of the other three shapes) that honours its whole contract while the
token is awaited, then answers from the real call.

Before the real call exists, it behaves as grpc.aio does for a call that has not got far yet:

* ``time_remaining()`` counts from the call's creation, and the time spent waiting for the token counts
  against the deadline (the real call gets what is left); a deadline that passes first ends the call
  with DEADLINE_EXCEEDED;
* ``cancel()`` ends it at once with CANCELLED ("Locally cancelled by application!"): awaiting it, or
  reading from it, raises ``asyncio.CancelledError``; writing raises ``asyncio.InvalidStateError``;
* cancelling a task awaiting the call (or a read or a write) cancels the call; cancelling one awaiting
  ``code()``, ``details()``, or the metadata does not;
* ``add_done_callback(cb)`` calls ``cb(call)`` once the call is over (at once when it already is);
* a call given a request iterator refuses ``write()``, and ``read()`` does not mix with iteration.

When the mesh cannot have the token (the control plane refuses or is away), the call ends with that
error's status (``code()``, ``details()``, trailing metadata) and awaiting or reading it raises the
:class:`agentmesh.errors.MeshError` itself, as the mesh always did: callers such as the bridge tell
the mesh's own failure from the agent's status.
"""

from __future__ import annotations

import asyncio
import enum
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

import grpc

from agentmesh.errors import MeshError
from agentmesh.interceptors.status import status_of

__all__ = [
    "DeferredCall",
    "DeferredStreamStreamCall",
    "DeferredStreamUnaryCall",
    "DeferredUnaryStreamCall",
    "DeferredUnaryUnaryCall",
]

P = TypeVar("P")
#: (what ``prepare`` returned, the time left before the deadline) -> the real grpc.aio call
Begin = Callable[[P, float | None], Any]

# grpc.aio's own wording, so that a call that never started reads like one of grpc.aio's
LOCALLY_CANCELLED = "Locally cancelled by application!"
ALREADY_FINISHED = "RPC already finished."
MIXED_STYLES = "The iterator and read/write APIs may not be mixed on a single RPC."
DEADLINE_EXCEEDED = "Deadline Exceeded"


class _Style(enum.Enum):
    UNKNOWN = 0
    ASYNC_GENERATOR = 1
    READER_WRITER = 2


@dataclass(frozen=True, slots=True)
class _Ended:
    """How a call ended that never started."""

    code: grpc.StatusCode
    details: str
    trailing: Any  # grpc.aio.Metadata
    debug: str | None
    error: Callable[[], BaseException] | None  # what awaiting it raises; None: asyncio.CancelledError


def _cancelled() -> _Ended:
    return _Ended(grpc.StatusCode.CANCELLED, LOCALLY_CANCELLED, grpc.aio.Metadata(), None, None)


def _expired() -> _Ended:
    code, debug = grpc.StatusCode.DEADLINE_EXCEEDED, f"DEADLINE_EXCEEDED:{DEADLINE_EXCEEDED}"

    def error() -> BaseException:  # a new one each time, as grpc.aio raises
        err: BaseException = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), DEADLINE_EXCEEDED,
                                                   debug)
        return err

    return _Ended(code, DEADLINE_EXCEEDED, grpc.aio.Metadata(), debug, error)


def _failed(err: Exception) -> _Ended:
    if isinstance(err, MeshError):
        code, message, md = status_of(err)
    else:  # e.g. grpc.aio.UsageError: the channel was closed meanwhile
        code, message, md = grpc.StatusCode.UNKNOWN, str(err), ()
    return _Ended(code, message, grpc.aio.Metadata(*md), f"{code.name}:{message}", lambda: err)


def _forward(callback: Callable[[Any], object], call: DeferredCall[Any], _real: Any) -> None:
    callback(call)


class DeferredCall(Generic[P]):
    """What the four shapes share: the state before the real call, then the real call.

    ``prepare()`` is awaited first (it waits for the token and runs the client chain); then
    ``begin(prepared, time_left)`` makes the real grpc.aio call, synchronously.
    """

    def __init__(self, prepare: Callable[[], Awaitable[P]], begin: Begin[P], timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._deadline = None if timeout is None else loop.time() + timeout
        self._call: Any = None
        self._ended: _Ended | None = None
        self._callbacks: list[Callable[[Any], object]] = []
        self._timer = None if self._deadline is None else loop.call_at(self._deadline, self._expire)
        self._task = loop.create_task(self._start(prepare, begin))
        self._task.add_done_callback(self._not_started)

    async def _start(self, prepare: Callable[[], Awaitable[P]], begin: Begin[P]) -> None:
        try:
            prepared = await prepare()
            call = begin(prepared, self.time_remaining())  # (no await between: a cancel() cannot come in here)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._end(_failed(e))
            return
        self._call = call
        if self._timer is not None:
            self._timer.cancel()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            call.add_done_callback(functools.partial(_forward, callback, self))

    def _not_started(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():  # by cancel(), by the deadline (or by the loop shutting down)
            self._end(_cancelled())

    def _end(self, ended: _Ended) -> bool:
        if self._call is not None or self._ended is not None:
            return False
        self._ended = ended
        if self._timer is not None:
            self._timer.cancel()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)
        return True

    def _expire(self) -> None:
        if self._call is None and self._ended is None:
            self._task.cancel()
            self._end(_expired())

    def _raise(self) -> NoReturn:
        assert self._ended is not None
        if self._ended.error is None:
            raise asyncio.CancelledError()
        raise self._ended.error()

    async def _settle(self, *, cancels: bool = False) -> Any:
        """The real call once it started, or None once the call ended without starting. ``cancels``:
        cancelling the awaiting task cancels the call (as grpc.aio's await, read() and write() do)."""
        if self._call is None and self._ended is None:
            try:
                await asyncio.wait((self._task,))
            except asyncio.CancelledError:
                if cancels:
                    self.cancel()
                raise
        return self._call

    async def _started(self) -> Any:
        """The real call; raises as grpc.aio does for a call that is over if this one never started."""
        call = await self._settle(cancels=True)
        if call is None:
            self._raise()
        return call

    # ------------------------------------------------------------------ grpc.aio.RpcContext
    def cancelled(self) -> bool:
        if self._call is not None:
            return bool(self._call.cancelled())
        return self._ended is not None and self._ended.code == grpc.StatusCode.CANCELLED

    def done(self) -> bool:
        if self._call is not None:
            return bool(self._call.done())
        return self._ended is not None

    def time_remaining(self) -> float | None:
        if self._call is not None:
            return self._call.time_remaining()  # type: ignore[no-any-return]
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - self._loop.time())

    def cancel(self) -> bool:
        if self._call is not None:
            return bool(self._call.cancel())
        if self._ended is not None:
            return False
        self._task.cancel()
        return self._end(_cancelled())

    def add_done_callback(self, callback: Callable[[Any], object]) -> None:
        if self._call is not None:
            self._call.add_done_callback(functools.partial(_forward, callback, self))
        elif self._ended is not None:
            callback(self)
        else:
            self._callbacks.append(callback)

    # ------------------------------------------------------------------ grpc.aio.Call
    async def initial_metadata(self) -> Any:
        call = await self._settle()
        return grpc.aio.Metadata() if call is None else await call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        call = await self._settle()
        if call is None:
            assert self._ended is not None
            return self._ended.trailing
        return await call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        call = await self._settle()
        if call is None:
            assert self._ended is not None
            return self._ended.code
        code: grpc.StatusCode = await call.code()
        return code

    async def details(self) -> str:
        call = await self._settle()
        if call is None:
            assert self._ended is not None
            return self._ended.details
        return await call.details()  # type: ignore[no-any-return]

    async def debug_error_string(self) -> str | None:
        call = await self._settle()
        if call is None:
            assert self._ended is not None
            return self._ended.debug
        return await call.debug_error_string()  # type: ignore[no-any-return]

    async def wait_for_connection(self) -> None:
        call = await self._settle()
        if call is None:
            self._raise()
        await call.wait_for_connection()

    def __repr__(self) -> str:
        if self._call is not None:
            return repr(self._call)
        state = "waiting for the member's token" if self._ended is None else f"ended: {self._ended.code}"
        return f"<{type(self).__name__} {state}>"


class _UnaryResponse(DeferredCall[P]):
    def __await__(self) -> Generator[Any, None, Any]:
        call = self._call
        if call is None:
            call = yield from self._started().__await__()
        return (yield from call.__await__())


class _StreamResponse(DeferredCall[P]):
    _style = _Style.UNKNOWN
    _responses: AsyncIterator[Any] | None = None

    def _use(self, style: _Style) -> None:
        if self._style is _Style.UNKNOWN:
            self._style = style
        elif self._style is not style:
            raise grpc.aio.UsageError(MIXED_STYLES)

    def __aiter__(self) -> AsyncIterator[Any]:
        self._use(_Style.ASYNC_GENERATOR)
        if self._responses is None:
            self._responses = self._iterate()
        return self._responses

    async def _iterate(self) -> AsyncIterator[Any]:
        call = self._call if self._call is not None else await self._started()
        async for response in call:
            yield response

    async def read(self) -> Any:
        if self._call is None and self._ended is not None:
            self._raise()  # (grpc.aio: a call that is over raises its status; reading leaves the style alone)
        if self._call is None or not self._call.done():
            self._use(_Style.READER_WRITER)
        call = self._call if self._call is not None else await self._started()
        return await call.read()


class _StreamRequest(DeferredCall[P]):
    def __init__(self, prepare: Callable[[], Awaitable[P]], begin: Begin[P], timeout: float | None, *,
                 iterating: bool) -> None:
        super().__init__(prepare, begin, timeout)
        self._iterating = iterating  # requests come from the iterator the call was given

    async def write(self, request: Any) -> None:
        if self._iterating:
            raise grpc.aio.UsageError(MIXED_STYLES)
        if self._call is None and self._ended is not None:
            raise asyncio.InvalidStateError(ALREADY_FINISHED)
        call = self._call if self._call is not None else await self._started()
        await call.write(request)

    async def done_writing(self) -> None:
        if self._iterating:
            raise grpc.aio.UsageError(MIXED_STYLES)
        call = await self._settle(cancels=True)
        if call is not None:  # (a call that is over: nothing to do)
            await call.done_writing()


class DeferredUnaryUnaryCall(_UnaryResponse[P], grpc.aio.UnaryUnaryCall[Any, Any]):
    """A ``grpc.aio.UnaryUnaryCall`` that starts once this member's token is at hand."""


class DeferredUnaryStreamCall(_StreamResponse[P], grpc.aio.UnaryStreamCall[Any, Any]):
    """A ``grpc.aio.UnaryStreamCall`` that starts once this member's token is at hand."""


class DeferredStreamUnaryCall(_UnaryResponse[P], _StreamRequest[P], grpc.aio.StreamUnaryCall[Any, Any]):
    """A ``grpc.aio.StreamUnaryCall`` that starts once this member's token is at hand."""


class DeferredStreamStreamCall(_StreamResponse[P], _StreamRequest[P], grpc.aio.StreamStreamCall[Any, Any]):
    """A ``grpc.aio.StreamStreamCall`` that starts once this member's token is at hand."""
