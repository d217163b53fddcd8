"""Dialing agents by name over mutual TLS, verifying that the server is the agent we meant.

The server's certificate must chain to the mesh bundle and carry the agent name as a DNS SAN
(checked through ``grpc.ssl_target_name_override``), so a mesh member cannot pose as another one
at a known address. Channels are cached per target and rebuilt when our own identity files change;
the interceptors of a channel are made for the identity snapshot the channel uses, so a token
bound to one certificate is never sent over a connection made with another. Stubs from
:meth:`MeshChannels.stub` follow rotations by themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from agentmesh.errors import ConfigError
from agentmesh.identity import validate_agent_name
from agentmesh.runtime.credentials import AgentIdentity, IdentityFiles

__all__ = ["MeshChannels", "secure_channel"]

T = TypeVar("T")
#: (target agent name, identity snapshot) -> the client interceptors of a channel
InterceptorFactory = Callable[[str, IdentityFiles], Sequence[grpc.aio.ClientInterceptor]]


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
        interceptors: Sequence[grpc.aio.ClientInterceptor] | InterceptorFactory = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.identity = identity
        self._resolve = addresses if callable(addresses) else self._from_mapping(dict(addresses))
        fixed = tuple(interceptors) if not callable(interceptors) else ()
        self._interceptors: InterceptorFactory = interceptors if callable(interceptors) else (lambda *_: fixed)
        self.options = tuple(options)
        self._channels: dict[str, tuple[int, grpc.aio.Channel]] = {}
        self._retired: list[grpc.aio.Channel] = []

    @staticmethod
    def _from_mapping(addresses: dict[str, str]) -> Callable[[str], str]:
        def resolve(name: str) -> str:
            try:
                return addresses[name]
            except KeyError:
                known = ", ".join(sorted(addresses)) or "none"
                raise ConfigError(f"unknown agent {name!r} (known: {known})") from None

        return resolve

    def channel(self, name: str) -> grpc.aio.Channel:
        """The current channel to agent ``name`` (made with the current identity files)."""
        self.identity.refresh()
        version = self.identity.version
        cached = self._channels.get(name)
        if cached is not None and cached[0] == version:
            return cached[1]
        validate_agent_name(name)
        if cached is not None:
            self._retired.append(cached[1])  # in-flight calls finish; closed with the others
        files = self.identity.files
        ch = secure_channel(self.identity, self._resolve(name), name, files=files,
                            interceptors=self._interceptors(name, files), options=self.options)
        self._channels[name] = (version, ch)
        return ch

    def stub(self, name: str, stub_class: Callable[[Any], T]) -> T:
        """A generated stub for agent ``name``, e.g. ``channels.stub("b", agent_pb2_grpc.AgentStub)``.

        The stub may be kept: each call goes over the current channel, so it follows rotations.
        """
        return stub_class(_FollowingChannel(self, name))

    async def close(self) -> None:
        channels = [c for _, c in self._channels.values()] + self._retired
        self._channels.clear()
        self._retired.clear()
        for ch in channels:
            await ch.close()


class _FollowingChannel:
    """Quacks like a grpc.aio.Channel for generated stubs; calls go to the agent's current channel."""

    def __init__(self, channels: MeshChannels, name: str) -> None:
        self._channels = channels
        self._name = name

    def _multi(self, kind: str, method: str, kwargs: dict[str, Any]) -> _FollowingCallable:
        return _FollowingCallable(self._channels, self._name, kind, method, kwargs)

    def unary_unary(self, method: str, **kwargs: Any) -> _FollowingCallable:
        return self._multi("unary_unary", method, kwargs)

    def unary_stream(self, method: str, **kwargs: Any) -> _FollowingCallable:
        return self._multi("unary_stream", method, kwargs)

    def stream_unary(self, method: str, **kwargs: Any) -> _FollowingCallable:
        return self._multi("stream_unary", method, kwargs)

    def stream_stream(self, method: str, **kwargs: Any) -> _FollowingCallable:
        return self._multi("stream_stream", method, kwargs)


class _FollowingCallable:
    __slots__ = ("_callable", "_channel", "_channels", "_kind", "_kwargs", "_method", "_name")

    def __init__(self, channels: MeshChannels, name: str, kind: str, method: str, kwargs: dict[str, Any]) -> None:
        self._channels, self._name, self._kind, self._method, self._kwargs = channels, name, kind, method, kwargs
        self._channel: grpc.aio.Channel | None = None
        self._callable: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ch = self._channels.channel(self._name)
        if ch is not self._channel:
            self._callable = getattr(ch, self._kind)(self._method, **self._kwargs)
            self._channel = ch
        return self._callable(*args, **kwargs)
