"""Dialing agents by name over mutual TLS, verifying that the server is the agent we meant.

The server's certificate must chain to the mesh bundle and carry the agent name as a DNS SAN
(checked through ``grpc.ssl_target_name_override``), so a mesh member cannot pose as another one
at a known address. Channels are cached per target and rebuilt when our own identity files change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from agentmesh.errors import ConfigError
from agentmesh.identity import validate_agent_name
from agentmesh.runtime.credentials import AgentIdentity

__all__ = ["MeshChannels", "secure_channel"]

T = TypeVar("T")
InterceptorFactory = Callable[[str], Sequence[grpc.aio.ClientInterceptor]]


def secure_channel(
    identity: AgentIdentity,
    address: str,
    server_name: str,
    *,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """An mTLS channel to ``address`` that only accepts a server certificate naming ``server_name``."""
    opts = [
        ("grpc.ssl_target_name_override", server_name),
        ("grpc.default_authority", server_name),
        *options,
    ]
    return grpc.aio.secure_channel(address, identity.channel_credentials(), options=opts,
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
        self._interceptors: InterceptorFactory = interceptors if callable(interceptors) else (lambda _: fixed)
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
        validate_agent_name(name)
        self.identity.refresh()
        version = self.identity.version
        cached = self._channels.get(name)
        if cached is not None and cached[0] == version:
            return cached[1]
        if cached is not None:
            self._retired.append(cached[1])  # in-flight calls finish; closed with the others
        ch = secure_channel(self.identity, self._resolve(name), name,
                            interceptors=self._interceptors(name), options=self.options)
        self._channels[name] = (version, ch)
        return ch

    def stub(self, name: str, stub_class: Callable[[grpc.aio.Channel], T]) -> T:
        """A generated stub for agent ``name``, e.g. ``channels.stub("b", agent_pb2_grpc.AgentStub)``."""
        return stub_class(self.channel(name))

    async def close(self) -> None:
        channels = [c for _, c in self._channels.values()] + self._retired
        self._channels.clear()
        self._retired.clear()
        for ch in channels:
            await ch.close()
