"""The gRPC methods of generated modules, by full name, with their message classes."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from agentmesh.errors import ConfigError

__all__ = ["MethodInfo", "methods_of", "services_of"]


@dataclass(frozen=True, slots=True)
class MethodInfo:
    full_name: str  # "/pkg.Service/Method"
    service: str  # "pkg.Service"
    name: str  # "Method"
    input: type[Message]
    output: type[Message]
    client_streaming: bool
    server_streaming: bool
    descriptor: MethodDescriptor


def services_of(modules: Iterable[str]) -> list[ServiceDescriptor]:
    """The services declared in generated ``*_pb2`` modules, e.g. ``["agentmesh.v1.agent_pb2"]``."""
    services = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            raise ConfigError(f"descriptors: cannot import {name!r} ({e.name} not found)") from None
        desc = getattr(module, "DESCRIPTOR", None)
        if desc is None or not hasattr(desc, "services_by_name"):
            raise ConfigError(f"descriptors: {name!r} is not a generated *_pb2 module")
        services.extend(desc.services_by_name.values())
    return services


def methods_of(modules: Iterable[str]) -> dict[str, MethodInfo]:
    out: dict[str, MethodInfo] = {}
    for svc in services_of(modules):
        for m in svc.methods:
            full = f"/{svc.full_name}/{m.name}"
            out[full] = MethodInfo(
                full, svc.full_name, m.name,
                message_factory.GetMessageClass(m.input_type), message_factory.GetMessageClass(m.output_type),
                m.client_streaming, m.server_streaming, m,
            )
    return out
