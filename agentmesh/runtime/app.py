"""Loading an agent application (``module:Class``) and registering it with a server, for any
generated gRPC service: the servicer's generated base class names its ``add_*_to_server``."""

from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import dataclass
from typing import Any

from agentmesh.errors import ConfigError

__all__ = ["Registration", "instantiate", "load_app", "registrations"]


@dataclass(frozen=True, slots=True)
class Registration:
    add: Any  # add_XServicer_to_server
    service: str  # full service name, e.g. "agentmesh.v1.Agent"


def load_app(spec: str) -> type:
    """Imports ``module:Class``; errors name what is missing."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"app {spec!r}: expected module:Class")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # the working directory, as `python -m` does
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(f"app {spec!r}: cannot import module {e.name!r}") from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"app {spec!r}: {module_name} has no attribute {attr!r}")
    if not inspect.isclass(obj):
        raise ConfigError(f"app {spec!r}: {attr} is not a class")
    return obj


def registrations(servicer_class: type) -> list[Registration]:
    """Every generated ``XServicer`` base of the class, with its ``add_XServicer_to_server``."""
    found = []
    for base in servicer_class.__mro__:
        module = sys.modules.get(base.__module__)
        if module is None or not base.__module__.endswith("_pb2_grpc") or not base.__name__.endswith("Servicer"):
            continue
        add = getattr(module, f"add_{base.__name__}_to_server", None)
        pb2 = sys.modules.get(base.__module__[: -len("_grpc")])
        if add is None or pb2 is None:
            continue
        service = base.__name__[: -len("Servicer")]
        desc = pb2.DESCRIPTOR.services_by_name.get(service)
        found.append(Registration(add, desc.full_name if desc is not None else service))
    if not found:
        raise ConfigError(f"{servicer_class.__name__} implements no generated gRPC servicer "
                          "(subclass e.g. agentmesh.v1.agent_pb2_grpc.AgentServicer)")
    return found


def instantiate(cls: type, node: Any) -> Any:
    """``cls(node)`` when its constructor takes a ``node`` (to call other agents), else ``cls()``."""
    params = inspect.signature(cls).parameters
    return cls(node=node) if "node" in params else cls()
