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

:class:`MeshChannel` and its multicallables are in :mod:`agentmesh.runtime.facade`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from agentmesh.errors import ConfigError, PeerIdentityError, Unavailable
from agentmesh.identity import check_server_identity, validate_agent_name
from agentmesh.interceptors.client import ClientSteps
from agentmesh.runtime.credentials import AgentIdentity, IdentityFiles
from agentmesh.runtime.facade import MeshChannel, StubChannel, retrieved
from agentmesh.runtime.probe import served_certificate

__all__ = ["MeshChannel", "MeshChannels", "StubChannel", "secure_channel"]

T = TypeVar("T")
DROP_GRACE = 1.0  # seconds a call in flight to a member that was just refused may still finish
RECHECK = 1.0  # seconds before a server that was refused, or could not be probed, is probed again
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
            task.add_done_callback(retrieved)
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
