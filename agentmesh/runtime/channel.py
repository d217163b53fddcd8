"""Dialing agents by name over mutual TLS, verifying that the server is the agent we meant.

The server's certificate must chain to the mesh bundle and carry the agent name as a DNS SAN
(checked through ``grpc.ssl_target_name_override``), and its SPIFFE ID must be that agent's: gRPC's
Python client cannot see the server's certificate, so before the first call on a new connection a
probe (:mod:`agentmesh.runtime.probe`, its own mutual-TLS handshake to the same addresses) reads it and
:func:`agentmesh.identity.check_server_identity` checks it. Calls wait for that check (milliseconds);
a server presenting another member's identity gets none (UNAVAILABLE), so a certificate that merely
carries the agent's name as a DNS SAN cannot pose as it. A server the probe cannot reach is left to the
gRPC call and checked again at a later call (see ``docs/SECURITY.md``, known limits).

:meth:`MeshChannels.channel` returns a :class:`MeshChannel`: a ``grpc.aio.Channel`` (the abstract
channel, implemented whole) to generated stubs, it follows certificate rotations (a new connection with
the new certificate, and a token bound to exactly that certificate), and runs the client chain in the stub layer
(:class:`agentmesh.interceptors.client.ClientSteps`), which costs less than grpc.aio interceptors.

Its multicallables take the arguments grpc.aio's take and return grpc.aio call objects: grpc.aio's
own when this member's token is at hand, else (its first call, right after a renewal, in the token's
refresh window) one of :mod:`agentmesh.runtime.calls`, a whole grpc.aio call that starts once the
token has arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc

from agentmesh.context import maybe_current_call
from agentmesh.errors import ConfigError, PeerIdentityError, Unavailable
from agentmesh.identity import check_server_identity, validate_agent_name
from agentmesh.interceptors.client import ClientSteps, Prepared
from agentmesh.runtime.calls import (
    DeferredCall,
    DeferredStreamStreamCall,
    DeferredStreamUnaryCall,
    DeferredUnaryStreamCall,
    DeferredUnaryUnaryCall,
)
from agentmesh.runtime.credentials import AgentIdentity, IdentityFiles
from agentmesh.runtime.probe import served_certificate

__all__ = ["MeshChannel", "MeshChannels", "StubChannel", "secure_channel"]

T = TypeVar("T")
DROP_GRACE = 1.0  # seconds a call in flight to a member that was just refused may still finish
RECHECK = 1.0  # seconds before a server that was refused, or could not be probed, is probed again
#: (target agent name, identity snapshot) -> the client chain of a channel (None: no chain)
StepsFactory = Callable[[str, IdentityFiles], ClientSteps | None]
#: what a multicallable factory is given to turn a request into bytes, and bytes into a response
Serializer = Callable[[Any], bytes]
Deserializer = Callable[[bytes], Any]


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
        verify_servers: bool = True,
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
        # by name: (address it was checked at, the check: True verified / False not reached, when it started)
        self.verify_servers = verify_servers
        self._checks: dict[str, tuple[str, asyncio.Task[bool], float]] = {}

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
        if (check := self._checks.get(name)) is not None and check[1].done() and not check[1].cancelled() \
                and check[1].exception() is None:
            del self._checks[name]  # a new connection: the server it reaches is checked again
        ch = secure_channel(self.identity, self._resolve(name), name, files=files, options=self.options)
        steps = self._steps(name, files)
        self._current[name] = (version, ch, steps, files.leaf.not_valid_after_utc.timestamp())
        self.on_new(name)
        return ch, steps

    def server_check(self, name: str) -> asyncio.Task[bool] | None:
        """None once the server of agent ``name`` was checked (or could not be reached: then gRPC decides);
        else the check under way, to await before a call starts. Raises :class:`Unavailable` while the
        server presents another identity (checked again after ``RECHECK`` seconds)."""
        if not self.verify_servers:
            return None
        target = self._resolve(name)
        hit = self._checks.get(name)
        now = time.monotonic()
        if hit is not None and hit[0] == target and _still_good(hit[1], now - hit[2]):
            task = hit[1]
        else:
            task = asyncio.get_running_loop().create_task(self._check_server(name, target))
            task.add_done_callback(_retrieved)
            self._checks[name] = (target, task, now)
        if not task.done():
            return task
        if (error := task.exception()) is not None:
            raise error
        return None

    async def _check_server(self, name: str, target: str) -> bool:
        """Probes every address of ``target``; True when each one reached presents agent ``name``."""
        addresses = _probe_addresses(target)
        results = await asyncio.gather(*(asyncio.to_thread(served_certificate, a, name, self.identity.dir)
                                         for a in addresses), return_exceptions=True)
        reached = bool(addresses)
        for address, result in zip(addresses, results, strict=True):
            if isinstance(result, Unavailable):  # down, or TLS refused it: the gRPC call finds out too
                reached = False
                continue
            if isinstance(result, BaseException):
                raise result
            try:
                check_server_identity(result, name, self.identity.trust_domain)
            except PeerIdentityError as e:
                self.drop(name, grace=0.0)
                raise Unavailable(f"refusing agent {name} at {address}: {e}") from None
        return reached

    def channel(self, name: str) -> MeshChannel:
        """The channel to agent ``name`` (one object per name; it follows rotations)."""
        facade = self._facades.get(name)
        if facade is None:
            self.current(name)  # refuses an unknown name now
            facade = self._facades[name] = MeshChannel(self, name)
        return facade

    def stub(self, name: str, stub_class: Callable[[grpc.aio.Channel], T]) -> T:
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

    def unary_unary(self, method: str, request_serializer: Serializer | None = None,
                    response_deserializer: Deserializer | None = None, **kwargs: Any) -> _UnaryUnary:
        kwargs.update(request_serializer=request_serializer, response_deserializer=response_deserializer)
        return _UnaryUnary(self._channels, self.name, method, kwargs)

    def unary_stream(self, method: str, request_serializer: Serializer | None = None,
                     response_deserializer: Deserializer | None = None, **kwargs: Any) -> _UnaryStream:
        kwargs.update(request_serializer=request_serializer, response_deserializer=response_deserializer)
        return _UnaryStream(self._channels, self.name, method, kwargs)

    def stream_unary(self, method: str, request_serializer: Serializer | None = None,
                     response_deserializer: Deserializer | None = None, **kwargs: Any) -> _StreamUnary:
        kwargs.update(request_serializer=request_serializer, response_deserializer=response_deserializer)
        return _StreamUnary(self._channels, self.name, method, kwargs)

    def stream_stream(self, method: str, request_serializer: Serializer | None = None,
                      response_deserializer: Deserializer | None = None, **kwargs: Any) -> _StreamStream:
        kwargs.update(request_serializer=request_serializer, response_deserializer=response_deserializer)
        return _StreamStream(self._channels, self.name, method, kwargs)

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


class _UnaryUnary(_ChainedCallable, grpc.aio.UnaryUnaryMultiCallable[Any, Any]):
    __slots__ = ()
    _kind = "unary_unary"

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        return self._start(request, timeout, metadata, credentials, wait_for_ready, compression)


class _UnaryStream(_ChainedCallable, grpc.aio.UnaryStreamMultiCallable[Any, Any]):
    __slots__ = ()
    _kind = "unary_stream"

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        return self._start(request, timeout, metadata, credentials, wait_for_ready, compression)


class _StreamUnary(_ChainedCallable, grpc.aio.StreamUnaryMultiCallable[Any, Any]):
    __slots__ = ()
    _kind = "stream_unary"

    def __call__(self, request_iterator: Any = None, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        return self._start(request_iterator, timeout, metadata, credentials, wait_for_ready, compression)


class _StreamStream(_ChainedCallable, grpc.aio.StreamStreamMultiCallable[Any, Any]):
    __slots__ = ()
    _kind = "stream_stream"

    def __call__(self, request_iterator: Any = None, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None, wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        return self._start(request_iterator, timeout, metadata, credentials, wait_for_ready, compression)


def _still_good(check: asyncio.Task[bool], age: float) -> bool:
    """Whether a server check stands: under way, passed, or refused / not reached less than RECHECK ago."""
    if not check.done():
        return True
    if check.cancelled():
        return False
    return (check.exception() is None and check.result()) or age < RECHECK


def _probe_addresses(target: str) -> tuple[str, ...]:
    """The host:port addresses a gRPC target names (``host:port``, or ``ipv4:a,b`` for replicas)."""
    for scheme in ("ipv4:", "ipv6:"):
        if target.startswith(scheme):
            return tuple(a for a in target[len(scheme):].split(",") if a)
    return () if target.startswith(("unix:", "dns:")) else (target,)


def _retrieved(fetch: asyncio.Future[Any]) -> None:
    if not fetch.cancelled():
        fetch.exception()  # (whoever awaited it has it; no "exception was never retrieved" when nobody did)


async def _shielded(token: Awaitable[str]) -> None:
    fetch = asyncio.ensure_future(token)
    fetch.add_done_callback(_retrieved)
    await asyncio.shield(fetch)
