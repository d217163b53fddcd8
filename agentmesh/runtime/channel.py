"""Dialing agents by name over mutual TLS, verifying that the server is the agent we meant.

The server's certificate must chain to the mesh bundle and carry the agent name as a DNS SAN
(checked through ``grpc.ssl_target_name_override``), so a mesh member cannot pose as another one
at a known address.

:meth:`MeshChannels.channel` returns a :class:`MeshChannel`: it looks like a ``grpc.aio.Channel``
to generated stubs, follows certificate rotations (a new connection with the new certificate, and
a token bound to exactly that certificate), and runs the client chain in the stub layer
(:class:`agentmesh.interceptors.client.ClientSteps`), which costs less than grpc.aio interceptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Generator, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from agentmesh.errors import ConfigError, Unavailable
from agentmesh.identity import validate_agent_name
from agentmesh.interceptors.client import ClientSteps
from agentmesh.runtime.credentials import AgentIdentity, IdentityFiles

__all__ = ["MeshChannel", "MeshChannels", "secure_channel"]

T = TypeVar("T")
DROP_GRACE = 1.0  # seconds a call in flight to a member that was just refused may still finish
#: (target agent name, identity snapshot) -> the client chain of a channel (None: no chain)
StepsFactory = Callable[[str, IdentityFiles], ClientSteps | None]


def secure_channel(
    identity: AgentIdentity,
    address: str,
    server_name: str,
    *,
    files: IdentityFiles | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """An mTLS channel to ``address`` that only accepts a server certificate naming ``server_name``."""
    opts = [
        ("grpc.ssl_target_name_override", server_name),
        ("grpc.default_authority", server_name),
        *options,
    ]
    return grpc.aio.secure_channel(address, identity.channel_credentials(files), options=opts,
                                   interceptors=list(interceptors))


class MeshChannels:
    """Channels to other agents, by agent name."""

    def __init__(
        self,
        identity: AgentIdentity,
        addresses: Mapping[str, str] | Callable[[str], str],
        *,
        steps: StepsFactory | None = None,
        options: Sequence[tuple[str, Any]] = (),
        refused: Callable[[str], bool] = lambda name: False,
        on_new: Callable[[str], object] = lambda name: None,
    ) -> None:
        self.identity = identity
        self.refused = refused  # e.g. a member revoked as a whole: never dialled, whatever its certificate
        self.on_new = on_new  # told of every new connection (e.g. to check the certificate the server presents)
        self._resolve = addresses if callable(addresses) else self._from_mapping(dict(addresses))
        self._steps: StepsFactory = steps or (lambda *_: None)
        self.options = tuple(options)
        # by name: (identity version, connection, its chain, when the certificate it presents expires)
        self._current: dict[str, tuple[int, grpc.aio.Channel, ClientSteps | None, float]] = {}
        self._facades: dict[str, MeshChannel] = {}
        self._closing: set[asyncio.Task[None]] = set()

    @staticmethod
    def _from_mapping(addresses: dict[str, str]) -> Callable[[str], str]:
        def resolve(name: str) -> str:
            try:
                return addresses[name]
            except KeyError:
                known = ", ".join(sorted(addresses)) or "none"
                raise ConfigError(f"unknown agent {name!r} (known: {known})") from None

        return resolve

    def current(self, name: str) -> tuple[grpc.aio.Channel, ClientSteps | None]:
        """The connection to agent ``name`` made with the current identity files, and its chain."""
        if self.refused(name):
            self.drop(name)
            raise Unavailable(f"agent {name} is revoked; calls to it are refused")
        self.identity.refresh()
        version = self.identity.version
        hit = self._current.get(name)
        if hit is not None and hit[0] == version:
            return hit[1], hit[2]
        validate_agent_name(name)
        if hit is not None:  # a rotation: calls in flight on the old connection may run while its cert is valid
            self.retire(hit[1], grace=max(1.0, hit[3] - time.time()))
        files = self.identity.files
        ch = secure_channel(self.identity, self._resolve(name), name, files=files, options=self.options)
        steps = self._steps(name, files)
        self._current[name] = (version, ch, steps, files.leaf.not_valid_after_utc.timestamp())
        self.on_new(name)
        return ch, steps

    def channel(self, name: str) -> MeshChannel:
        """The channel to agent ``name`` (one object per name; it follows rotations)."""
        facade = self._facades.get(name)
        if facade is None:
            self.current(name)  # refuses an unknown name now
            facade = self._facades[name] = MeshChannel(self, name)
        return facade

    def stub(self, name: str, stub_class: Callable[[Any], T]) -> T:
        """A generated stub for agent ``name``, e.g. ``channels.stub("b", agent_pb2_grpc.AgentStub)``;
        it may be kept: every call goes over the current connection, through the client chain."""
        return stub_class(self.channel(name))

    def retire(self, channel: grpc.aio.Channel, *, grace: float | None) -> None:
        """Closes a channel in the background: no new calls; those in flight get ``grace`` seconds."""
        task = asyncio.get_running_loop().create_task(channel.close(grace))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def names(self) -> tuple[str, ...]:
        """The agents this member has a connection to."""
        return tuple(self._current)

    def drop(self, name: str, *, grace: float = DROP_GRACE) -> None:
        """Closes the connection to ``name`` (a revoked member): no new calls; calls in flight get ``grace``
        seconds, then are cancelled (awaiting code sees CancelledError; inside a mesh handler the server
        chain answers its own caller UNAVAILABLE)."""
        hit = self._current.pop(name, None)
        if hit is not None:
            self.retire(hit[1], grace=grace)

    async def close(self) -> None:
        channels = [hit[1] for hit in self._current.values()]
        self._current.clear()
        for ch in channels:
            await ch.close()
        for task in list(self._closing):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class MeshChannel:
    """A ``grpc.aio.Channel`` look-alike for one agent; state queries go to the current connection."""

    def __init__(self, channels: MeshChannels, name: str) -> None:
        self._channels = channels
        self.name = name

    def _callable(self, kind: str, method: str, kwargs: dict[str, Any]) -> _ChainedCallable:
        return _ChainedCallable(self._channels, self.name, kind, method, kwargs)

    def unary_unary(self, method: str, **kwargs: Any) -> _ChainedCallable:
        return self._callable("unary_unary", method, kwargs)

    def unary_stream(self, method: str, **kwargs: Any) -> _ChainedCallable:
        return self._callable("unary_stream", method, kwargs)

    def stream_unary(self, method: str, **kwargs: Any) -> _ChainedCallable:
        return self._callable("stream_unary", method, kwargs)

    def stream_stream(self, method: str, **kwargs: Any) -> _ChainedCallable:
        return self._callable("stream_stream", method, kwargs)

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


class _ChainedCallable:
    """A multicallable that runs the client chain, then calls over the current connection."""

    __slots__ = ("_callable", "_channel", "_channels", "_kind", "_kwargs", "_method", "_name")

    def __init__(self, channels: MeshChannels, name: str, kind: str, method: str, kwargs: dict[str, Any]) -> None:
        self._channels, self._name, self._kind, self._method, self._kwargs = channels, name, kind, method, kwargs
        self._channel: grpc.aio.Channel | None = None
        self._callable: Any = None

    def __call__(self, request: Any = None, *, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        ch, steps = self._channels.current(self._name)
        if ch is not self._channel:
            self._callable = getattr(ch, self._kind)(self._method, **self._kwargs)
            self._channel = ch
        invoke = self._callable
        if steps is None:
            return invoke(request, timeout=timeout, metadata=metadata, credentials=credentials,
                          wait_for_ready=wait_for_ready, compression=compression)
        prepared = steps.prepare_now(self._method, metadata, timeout)
        if prepared is None:  # the token must be fetched first (start-up, right after a rotation)
            async def start() -> Any:
                md, t, span = await steps.prepare(self._method, metadata, timeout)
                return _started(steps, span, lambda: invoke(request, timeout=t, metadata=md, credentials=credentials,
                                                            wait_for_ready=wait_for_ready, compression=compression))

            return _DeferredCall(asyncio.ensure_future(start()))
        md, t, span = prepared
        return _started(steps, span, lambda: invoke(request, timeout=t, metadata=md, credentials=credentials,
                                                    wait_for_ready=wait_for_ready, compression=compression))


def _started(steps: ClientSteps, span: Any, make: Callable[[], Any]) -> Any:
    try:
        call = make()
    except BaseException:
        steps.not_started(span)
        raise
    steps.end_when_done(call, span)
    return call


class _DeferredCall:
    """A call whose start waits for this member's token: awaitable, iterable and cancellable like a
    grpc.aio call; the other call methods wait for the real call, then answer from it."""

    def __init__(self, starting: asyncio.Future[Any]) -> None:
        self._starting = starting

    def cancel(self) -> bool:
        if self._starting.done() and not self._starting.cancelled() and self._starting.exception() is None:
            return bool(self._starting.result().cancel())
        return self._starting.cancel()

    def done(self) -> bool:
        if not self._starting.done():
            return False
        if self._starting.cancelled() or self._starting.exception() is not None:
            return True
        return bool(self._starting.result().done())

    def __await__(self) -> Generator[Any, None, Any]:
        call = yield from self._starting.__await__()
        return (yield from call.__await__())

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        call = await self._starting
        async for item in call:
            yield item

    async def read(self) -> Any:
        return await (await self._starting).read()

    async def write(self, request: Any) -> None:
        await (await self._starting).write(request)

    async def done_writing(self) -> None:
        await (await self._starting).done_writing()

    async def code(self) -> grpc.StatusCode:
        return await (await self._starting).code()

    async def details(self) -> str:
        return str(await (await self._starting).details())

    async def initial_metadata(self) -> Any:
        return await (await self._starting).initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await (await self._starting).trailing_metadata()

    async def wait_for_connection(self) -> None:
        await (await self._starting).wait_for_connection()
