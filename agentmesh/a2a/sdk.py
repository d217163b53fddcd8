"""The a2a-sdk, imported on demand: agentmesh runs without it; a mesh file that names an A2A agent
needs the ``a2a`` extra (``pip install 'agentmesh[a2a]'``), and says so in one line when it is absent."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from agentmesh.errors import ConfigError

__all__ = ["A2A_SERVICE", "a2a_pb2", "card_from_json", "require"]

#: the full gRPC service name of A2A v1.0
A2A_SERVICE = "lf.a2a.v1.A2AService"
PIN = "a2a-sdk[grpc]==1.3.0"


def require(module: str, what: str) -> ModuleType:
    """``module`` of the a2a-sdk, or a ConfigError naming ``what`` needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"{what}: needs the a2a-sdk ({e.name or module} is missing); "
                          f"install agentmesh[a2a] ({PIN})") from None


def a2a_pb2(what: str = "A2A") -> Any:
    return require("a2a.types.a2a_pb2", what)


def card_from_json(text: str, what: str) -> Any:
    """An ``AgentCard`` message from A2A JSON, or a ConfigError (one line) naming ``what``."""
    from google.protobuf import json_format

    pb = a2a_pb2(what)
    card = pb.AgentCard()
    try:
        json_format.Parse(text, card)
    except json_format.ParseError as e:
        raise ConfigError(f"{what}: not an A2A AgentCard: {str(e).splitlines()[0]}") from None
    if not card.name:
        raise ConfigError(f"{what}: an AgentCard needs a name")
    return card
