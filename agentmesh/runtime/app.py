"""Loading an agent application (``module:Class``) and registering it with a server, for any
generated gRPC service: the servicer's generated base class names its ``add_*_to_server``."""

from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import dataclass
from typing import Any

from agentmesh.config import AgentConfig
from agentmesh.errors import ConfigError

__all__ = ["Registration", "instantiate", "load_app", "load_object", "registrations", "servicer_for"]


@dataclass(frozen=True, slots=True)
class Registration:
    add: Any  # add_XServicer_to_server
    service: str  # full service name, e.g. "agentmesh.v1.Agent"


def load_app(spec: str) -> type:
    """Imports ``module:Class``; errors name what is missing."""
    obj = load_object(spec)
    if not inspect.isclass(obj):
        raise ConfigError(f"app {spec!r}: {spec.partition(':')[2]} is not a class")
    return obj


def load_object(spec: str) -> Any:
    """Imports ``module:attr`` (any object); errors name what is missing."""
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
    return obj


def servicer_for(agent: AgentConfig, node: Any) -> tuple[Any, list[Registration]]:
    """The servicer of ``agent.app`` and the services to register it for.

    An A2A agent (``a2a:`` in the mesh file) names an a2a-sdk ``AgentExecutor``: it is served through
    the a2a-sdk's own GrpcHandler (:mod:`agentmesh.a2a.adapter`). Any other app is a servicer class.
    """
    if agent.app is None:
        raise ConfigError(f"agents.{agent.name}.app: required to run the agent (module:Class)")
    if agent.a2a is not None:
        from agentmesh.a2a.sdk import require

        adapter = require("agentmesh.a2a.adapter", f"agents.{agent.name}.a2a")
        from agentmesh.a2a.cards import mesh_card

        executor = adapter.executor_of(load_object(agent.app), agent.name, node)
        extended = mesh_card(node.config, agent.name, extended=True) if agent.a2a.extended_card else None
        servicer = adapter.a2a_servicer(agent, executor, card=mesh_card(node.config, agent.name),
                                        extended_card=extended)
        return servicer, registrations(type(servicer))
    cls = load_app(agent.app)
    return instantiate(cls, node), registrations(cls)


def registrations(servicer_class: type) -> list[Registration]:
    """Every generated ``XServicer`` base of the class, with its ``add_XServicer_to_server``.

    The full service name comes from the service's descriptor in the sibling ``*_pb2`` module,
    imported here when the app has not: a ``.proto`` that declares only services (its messages in
    other files, as in gRPC's interop ``test.proto``) has a ``*_pb2_grpc`` module that imports only
    the messages' modules. Without an importable ``*_pb2``, the name is what ``add_XServicer_to_server``
    itself registers.
    """
    found = []
    for base in servicer_class.__mro__:
        module = sys.modules.get(base.__module__)
        if module is None or not base.__module__.endswith("_pb2_grpc") or not base.__name__.endswith("Servicer"):
            continue
        add = getattr(module, f"add_{base.__name__}_to_server", None)
        if not callable(add):
            continue
        found.append(Registration(add, _service_name(base, add)))
    if not found:
        raise ConfigError(f"{servicer_class.__name__} implements no generated gRPC servicer "
                          "(subclass e.g. agentmesh.v1.agent_pb2_grpc.AgentServicer)")
    return found


def _service_name(base: type, add: Any) -> str:
    short = base.__name__[: -len("Servicer")]
    pb2_name = base.__module__[: -len("_grpc")]
    pb2 = sys.modules.get(pb2_name)
    if pb2 is None:
        try:
            pb2 = importlib.import_module(pb2_name)  # puts the service's file in the descriptor pool
        except Exception:  # absent, or not loadable beside the app's modules: the name is found below
            pb2 = None
    services = getattr(getattr(pb2, "DESCRIPTOR", None), "services_by_name", None)
    desc = services.get(short) if services is not None else None
    if desc is not None:
        return str(desc.full_name)
    registered = _registered_services(add, base)
    return registered[0] if len(registered) == 1 else short


class _Recorder:
    """Stands in for a server to learn which service names ``add_XServicer_to_server`` registers."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        for handler in handlers:
            name = getattr(handler, "service_name", None)  # grpc.ServiceRpcHandler
            if callable(name) and isinstance(found := name(), str) and found not in self.names:
                self.names.append(found)

    def add_registered_method_handlers(self, service_name: str, method_handlers: Any) -> None:
        if service_name not in self.names:
            self.names.append(service_name)


def _registered_services(add: Any, base: type) -> list[str]:
    recorder = _Recorder()
    try:
        add(base, recorder)  # generated code only reads the servicer's methods: the class will do
    except Exception:  # a hand-written add function: fall back to the short name
        return []
    return recorder.names


def instantiate(cls: type, node: Any) -> Any:
    """``cls(node)`` when its constructor takes a ``node`` (to call other agents), else ``cls()``."""
    params = inspect.signature(cls).parameters
    return cls(node=node) if "node" in params else cls()
