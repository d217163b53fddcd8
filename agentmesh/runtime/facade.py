"""The channel a member's code is given for one agent: :class:`MeshChannel`, a whole ``grpc.aio.Channel``
whose multicallables run the client chain, then call over the connection that is current then.

Its multicallables take the arguments grpc.aio's take and return grpc.aio call objects: grpc.aio's
own when this member's token is at hand, else (its first call, right after a renewal, in the token's
refresh window) one of :mod:`agentmesh.runtime.calls`, a whole grpc.aio call that starts once the
token has arrived. The connections themselves, their rotation and the check of the server they reach
belong to :class:`agentmesh.runtime.channel.MeshChannels`.

A multicallable is made once per channel, method and arguments, and kept: generated stubs made per call
(``node.stub(name, Stub).Method(...)``, the way agent code calls) then cost a few look-ups, and each
multicallable keeps grpc.aio's own for the current connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc

from agentmesh.context import maybe_current_call
from agentmesh.interceptors.client import ClientSteps, Prepared
from agentmesh.runtime.calls import (
    DeferredCall,
    DeferredStreamStreamCall,
    DeferredStreamUnaryCall,
    DeferredUnaryStreamCall,
    DeferredUnaryUnaryCall,
)

if TYPE_CHECKING:
    from agentmesh.runtime.channel import MeshChannels

__all__ = ["MAX_MULTICALLABLES", "Deserializer", "MeshChannel", "Serializer", "StubChannel"]

_C = TypeVar("_C", bound="_ChainedCallable")
MAX_MULTICALLABLES = 1024  # kept per channel (one per method and arguments a stub was made with)
_REGISTERED = {"_registered_method": True}
#: what a multicallable factory is given to turn a request into bytes, and bytes into a response
Serializer = Callable[[Any], bytes]
Deserializer = Callable[[bytes], Any]


class StubChannel(Protocol):
    """What a generated stub and a client that manages a channel use of a ``grpc.aio.Channel``: the four
    multicallable factories, the connectivity state and its changes, ``channel_ready`` and ``close``.
    :class:`MeshChannel` is one; so is every ``grpc.aio.Channel``."""

    def unary_unary(self, method: str, *, request_serializer: Serializer | None = None,
                    response_deserializer: Deserializer | None = None,
                    ) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]: ...

    def unary_stream(self, method: str, *, request_serializer: Serializer | None = None,
                     response_deserializer: Deserializer | None = None,
                     ) -> grpc.aio.UnaryStreamMultiCallable[Any, Any]: ...

    def stream_unary(self, method: str, *, request_serializer: Serializer | None = None,
                     response_deserializer: Deserializer | None = None,
                     ) -> grpc.aio.StreamUnaryMultiCallable[Any, Any]: ...

    def stream_stream(self, method: str, *, request_serializer: Serializer | None = None,
                      response_deserializer: Deserializer | None = None,
                      ) -> grpc.aio.StreamStreamMultiCallable[Any, Any]: ...

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity: ...

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None: ...

    async def channel_ready(self) -> None: ...

    async def close(self, grace: float | None = None) -> None: ...


class MeshChannel(grpc.aio.Channel):
    """The ``grpc.aio.Channel`` of one agent, what generated stubs and the a2a-sdk's transports take: the
    whole abstract channel, each call over the current connection through the client chain, and state
    queries to the current connection."""

    def __init__(self, channels: MeshChannels, name: str) -> None:
        self._channels = channels
        self.name = name
        # the multicallables made so far, by shape, method and arguments: a stub made per call (what
        # ``node.stub(...)`` invites) gets the ones of the stubs before it, and with them the grpc.aio
        # multicallable each keeps for the current connection
        self._made: dict[tuple[Any, ...], _ChainedCallable] = {}

    def _multicallable(self, kind: type[_C], method: str, serializer: Serializer | None,
                       deserializer: Deserializer | None, kwargs: dict[str, Any]) -> _C:
        try:
            # (what a generated stub passes besides the serialisers: the key of the common case is short)
            key = (kind, method, serializer, deserializer) if kwargs == _REGISTERED \
                else (kind, method, serializer, deserializer, *kwargs.items())
            made = self._made.get(key)
        except TypeError:  # an argument that cannot be a key (unhashable): not kept
            made, key = None, None
        if made is None:
            made = kind(self._channels, self.name, method,
                        {**kwargs, "request_serializer": serializer, "response_deserializer": deserializer})
            if key is not None:
                if len(self._made) >= MAX_MULTICALLABLES:
                    self._made.clear()
                self._made[key] = made
        return made  # type: ignore[return-value]

    def unary_unary(self, method: str, request_serializer: Serializer | None = None,
                    response_deserializer: Deserializer | None = None, **kwargs: Any) -> _UnaryUnary:
        return self._multicallable(_UnaryUnary, method, request_serializer, response_deserializer, kwargs)

    def unary_stream(self, method: str, request_serializer: Serializer | None = None,
                     response_deserializer: Deserializer | None = None, **kwargs: Any) -> _UnaryStream:
        return self._multicallable(_UnaryStream, method, request_serializer, response_deserializer, kwargs)

    def stream_unary(self, method: str, request_serializer: Serializer | None = None,
                     response_deserializer: Deserializer | None = None, **kwargs: Any) -> _StreamUnary:
        return self._multicallable(_StreamUnary, method, request_serializer, response_deserializer, kwargs)

    def stream_stream(self, method: str, request_serializer: Serializer | None = None,
                      response_deserializer: Deserializer | None = None, **kwargs: Any) -> _StreamStream:
        return self._multicallable(_StreamStream, method, request_serializer, response_deserializer, kwargs)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channels.current(self.name)[0].get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        # the connection may have been replaced (a renewal) since the state was observed: a new one is
        # asked to connect, and its own state is what changes or not
        channel = self._channels.current(self.name)[0]
        if channel.get_state(try_to_connect=True) != last_observed_state:
            return
        await channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channels.current(self.name)[0].channel_ready()

    async def close(self, grace: float | None = None) -> None:
        """Ends this view only: the connections belong to the node (shared by every stub, renewed with its
        certificate, closed by ``node.close()``). Clients that close the channel they were given when they
        are done (the a2a-sdk's transports, ``async with``) leave the node's other calls running."""

    async def __aenter__(self) -> MeshChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _ChainedCallable:
    """A multicallable that runs the client chain, then calls over the current connection; it takes
    the arguments grpc.aio's multicallable of its shape takes (the subclasses below)."""

    __slots__ = ("_callable", "_channel", "_channels", "_kwargs", "_method", "_name")
    _kind: str  # the grpc.aio.Channel method making the multicallable of this shape

    def __init__(self, channels: MeshChannels, name: str, method: str, kwargs: dict[str, Any]) -> None:
        self._channels, self._name, self._method, self._kwargs = channels, name, method, kwargs
        self._channel: grpc.aio.Channel | None = None
        self._callable: Any = None

    def _connection(self) -> tuple[grpc.aio.Channel, ClientSteps | None, asyncio.Task[bool] | None, Any]:
        """The current connection, its chain, the check of its server under way (None: done), and this
        method's grpc.aio multicallable on it."""
        ch, steps = self._channels.current(self._name)
        check = self._channels.server_check(self._name)  # raises while the server presents another identity
        if ch is not self._channel:
            self._callable = getattr(ch, self._kind)(self._method, **self._kwargs)
            self._channel = ch
        return ch, steps, check, self._callable

    def _start(self, request: Any, timeout: float | None, metadata: Any, credentials: grpc.CallCredentials | None,
               wait_for_ready: bool | None, compression: grpc.Compression | None) -> Any:
        _, steps, check, invoke = self._connection()
        if steps is None and check is None:
            return invoke(request, timeout=timeout, metadata=metadata, credentials=credentials,
                          wait_for_ready=wait_for_ready, compression=compression)
        prepared = steps.prepare_now(self._method, metadata, timeout) if steps is not None and check is None \
            else None
        if prepared is None or steps is None:  # the server is being checked, or the token must be fetched first
            return self._deferred(request, timeout, metadata, credentials, wait_for_ready, compression)
        md, t, span = prepared
        try:
            call = invoke(request, timeout=t, metadata=md, credentials=credentials, wait_for_ready=wait_for_ready,
                          compression=compression)
        except BaseException:
            steps.not_started(span)
            raise
        steps.end_when_done(call, span)
        return call

    def _deferred(self, request: Any, timeout: float | None, metadata: Any, credentials: grpc.CallCredentials | None,
                  wait_for_ready: bool | None, compression: grpc.Compression | None) -> DeferredCall[_Ready]:
        """A whole grpc.aio call object at once; the real call starts once the server's identity was
        checked and the token is at hand.

        It starts on the connection that is current then: a renewal while it waited made a new one (with
        the new certificate, and a chain whose token is bound to it) and retired the old one, which takes
        no new calls; the call is then prepared again for the new connection."""
        served = maybe_current_call()  # the deadline counts from now: bounded as prepare_now() bounds it
        if served is not None and served.deadline is not None:
            left = max(0.0, served.deadline - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
        method = self._method

        async def prepare() -> _Ready:
            while True:
                ch, steps, check, invoke = self._connection()
                if check is not None:  # shared by every call waiting for it: one call given up does not cancel it
                    await asyncio.shield(check)
                    continue  # (the check may have refused the server, or a renewal come meanwhile)
                if steps is None:
                    return _Ready(invoke, None, None)
                if steps.tokens is not None and steps.tokens.cached() is None:
                    # a call given up (cancelled, past its deadline) does not cancel the fetch
                    await _shielded(steps.tokens.token())
                    if self._channels.current(self._name)[0] is not ch:
                        continue  # renewed while the token was fetched: the new connection needs its own
                prepared = await steps.prepare(method, metadata, None)  # (the timeout: what is left when it starts)
                now, _, check, _ = self._connection()
                if now is ch and check is None:  # (no await from here until begin(): still current then)
                    return _Ready(invoke, steps, prepared)
                steps.not_started(prepared[2])  # a renewal (or a new check of the server) came meanwhile

        def begin(ready: _Ready, left: float | None) -> Any:
            if ready.steps is None or ready.prepared is None:
                return ready.invoke(request, timeout=left, metadata=metadata, credentials=credentials,
                                    wait_for_ready=wait_for_ready, compression=compression)
            md, _, span = ready.prepared
            try:
                call = ready.invoke(request, timeout=left, metadata=md, credentials=credentials,
                                    wait_for_ready=wait_for_ready, compression=compression)
            except BaseException:
                ready.steps.not_started(span)
                raise
            ready.steps.end_when_done(call, span)
            return call

        if self._kind == "unary_unary":
            return DeferredUnaryUnaryCall(prepare, begin, timeout)
        if self._kind == "unary_stream":
            return DeferredUnaryStreamCall(prepare, begin, timeout)
        if self._kind == "stream_unary":
            return DeferredStreamUnaryCall(prepare, begin, timeout, iterating=request is not None)
        return DeferredStreamStreamCall(prepare, begin, timeout, iterating=request is not None)


@dataclass(frozen=True, slots=True)
class _Ready:
    """A deferred call ready to start: the multicallable of the connection it starts on, that
    connection's chain (None: no chain) and what the chain prepared."""

    invoke: Any
    steps: ClientSteps | None
    prepared: Prepared | None


class _RequestCallable(_ChainedCallable):
    """The shapes whose call takes one request (unary-unary, unary-stream): its arguments as grpc.aio's."""

    __slots__ = ()

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        return self._start(request, timeout, metadata, credentials, wait_for_ready, compression)


class _IteratorCallable(_ChainedCallable):
    """The shapes whose call takes a request iterator, or none to write requests (stream-unary,
    stream-stream): its arguments as grpc.aio's, positional ones too."""

    __slots__ = ()

    def __call__(self, request_iterator: Any = None, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        return self._start(request_iterator, timeout, metadata, credentials, wait_for_ready, compression)


class _UnaryUnary(_RequestCallable, grpc.aio.UnaryUnaryMultiCallable[Any, Any]):
    __slots__ = ()
    _kind = "unary_unary"


class _UnaryStream(_RequestCallable, grpc.aio.UnaryStreamMultiCallable[Any, Any]):
    __slots__ = ()
    _kind = "unary_stream"


class _StreamUnary(_IteratorCallable, grpc.aio.StreamUnaryMultiCallable[Any, Any]):
    __slots__ = ()
    _kind = "stream_unary"


class _StreamStream(_IteratorCallable, grpc.aio.StreamStreamMultiCallable[Any, Any]):
    __slots__ = ()
    _kind = "stream_stream"


def retrieved(fetch: asyncio.Future[Any]) -> None:
    """A done callback that marks a future's exception as retrieved (whoever awaited it has it; no
    "exception was never retrieved" when nobody did)."""
    if not fetch.cancelled():
        fetch.exception()


async def _shielded(token: Awaitable[str]) -> None:
    fetch = asyncio.ensure_future(token)
    fetch.add_done_callback(retrieved)
    await asyncio.shield(fetch)
