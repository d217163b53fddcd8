"""The operations the bridge exposes, generated from each agent's protobuf descriptors. Pure.

Every unary and server-streaming method of every service in ``agents.<name>.descriptors`` gets

* the default route ``POST /v1/agents/{agent}/{package.Service}/{Method}`` (body: the request), and
* one route per ``google.api.http`` binding of the method, under the agent's prefix:
  ``get: "/v1/things/{id}"`` on agent ``a`` is served at ``GET /v1/agents/a/v1/things/{id}``
  (the agent name is part of every path, so two agents may serve the same annotated service).

Client-streaming and bidirectional methods are listed nowhere and answer 501.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from google.protobuf.descriptor import MethodDescriptor

from agentmesh.bridge.errors import HttpError
from agentmesh.bridge.template import PathTemplate
from agentmesh.config import MeshConfig
from agentmesh.errors import ConfigError
from agentmesh.runtime.descriptors import MethodInfo, methods_of

if TYPE_CHECKING:
    from agentmesh.bridge.schemas import MessageDesc

try:  # googleapis-common-protos (a dependency): without it every method has the default route only
    from google.api import annotations_pb2 as _annotations  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover
    _annotations = None

__all__ = ["PREFIX", "Catalog", "HttpRule", "Match", "Operation", "http_rules"]

PREFIX = ("v1", "agents")
_VERBS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True, slots=True)
class HttpRule:
    """One ``google.api.http`` binding: verb, path template (relative to the agent), body mapping."""

    verb: str  # upper case
    template: PathTemplate
    body: str = ""  # "" (no body), "*" (the whole request) or a top-level field name
    response_body: str = ""


@dataclass(frozen=True, slots=True)
class Operation:
    agent: str
    info: MethodInfo
    rules: tuple[HttpRule, ...] = ()

    @property
    def method(self) -> str:
        return self.info.full_name  # "/pkg.Service/Method"

    @property
    def streaming(self) -> bool:
        return self.info.server_streaming

    @property
    def supported(self) -> bool:
        return not self.info.client_streaming

    @property
    def path(self) -> str:
        return f"/{'/'.join(PREFIX)}/{self.agent}/{self.info.service}/{self.info.name}"

    @property
    def operation_id(self) -> str:
        return f"{self.agent}.{self.info.service}.{self.info.name}"

    def route(self, rule: HttpRule | None) -> str:
        """The path template of this operation's route by ``rule`` (None: the default route), as
        openapi.json lists it: "/v1/agents/a/v1/things/{id}" (its spans' ``http.route``)."""
        return self.path if rule is None else f"/{'/'.join(PREFIX)}/{self.agent}{rule.template.openapi_path()}"


@dataclass(frozen=True, slots=True)
class Match:
    op: Operation
    rule: HttpRule | None  # None: the default route
    params: dict[str, str] = field(default_factory=dict)


def http_rules(method: MethodDescriptor) -> tuple[HttpRule, ...]:
    """The ``google.api.http`` bindings of a method (its rule and additional bindings), if any."""
    if _annotations is None:
        return ()
    options = method.GetOptions()
    if not options.HasExtension(_annotations.http):
        return ()
    top = options.Extensions[_annotations.http]
    out = []
    for rule in (top, *top.additional_bindings):
        kind = rule.WhichOneof("pattern")
        if kind is None:
            continue
        verb, path = (rule.custom.kind.upper(), rule.custom.path) if kind == "custom" else \
            (kind.upper(), getattr(rule, kind))
        out.append(HttpRule(verb, PathTemplate.parse(path), rule.body, rule.response_body))
    return tuple(out)


class Catalog:
    """Operations by agent, and the matching of decoded request paths to them."""

    def __init__(self, operations: Iterable[Operation]) -> None:
        self._by_agent: dict[str, dict[tuple[str, str], Operation]] = {}
        for op in operations:
            self._by_agent.setdefault(op.agent, {})[(op.info.service, op.info.name)] = op

    @classmethod
    def from_config(cls, config: MeshConfig) -> Catalog:
        ops = []
        for name, agent in config.agents.items():
            for info in methods_of(agent.descriptors).values():
                rules = http_rules(info.descriptor)
                for rule in rules:
                    _check_rule(info, rule)
                ops.append(Operation(name, info, rules))
        return cls(ops)

    @property
    def agents(self) -> tuple[str, ...]:
        return tuple(self._by_agent)

    def operations(self, agent: str | None = None) -> list[Operation]:
        agents = self._by_agent if agent is None else {agent: self._by_agent.get(agent, {})}
        return [op for ops in agents.values() for op in ops.values() if op.supported]

    def match(self, verb: str, segments: Sequence[str]) -> Match:
        """The operation for ``verb`` and decoded path ``segments`` (``["v1", "agents", agent, ...]``)."""
        if tuple(segments[:2]) != PREFIX or len(segments) < 4:
            raise HttpError.not_found("no such route")
        agent, rest = segments[2], list(segments[3:])
        ops = self._by_agent.get(agent)
        if ops is None:
            raise HttpError.not_found(f"unknown agent {agent!r}")
        allowed: set[str] = set()
        if len(rest) == 2 and (rest[0], rest[1]) in ops:
            op = ops[(rest[0], rest[1])]
            if verb == "POST":
                return _checked(Match(op, None))
            allowed.add("POST")
        found: Match | None = None
        for op in ops.values():
            for rule in op.rules:
                params = rule.template.match(rest)
                if params is None:
                    continue
                if rule.verb != verb:
                    allowed.add(rule.verb)
                elif found is None or (rule.template.verb is not None and found.rule is not None
                                       and found.rule.template.verb is None):
                    # a template with a ":verb" is the more specific: "/tasks/{id=*}:subscribe" wins over
                    # "/tasks/{id=*}", whose "*" would also take "x:subscribe"
                    found = Match(op, rule, params)
        if found is not None:
            return _checked(found)
        if allowed:
            raise HttpError(grpc.StatusCode.UNIMPLEMENTED, f"method {verb} not allowed here", status=405,
                            headers={"Allow": ", ".join(sorted(allowed))})
        raise HttpError.not_found(f"agent {agent!r} has no method at this path")


def _checked(m: Match) -> Match:
    if not m.op.supported:
        raise HttpError(grpc.StatusCode.UNIMPLEMENTED,
                        f"{m.op.method} streams requests, which the REST bridge does not support")
    return m


def _check_rule(info: MethodInfo, rule: HttpRule) -> None:
    where = f"{info.full_name} http rule {rule.template.source!r}"
    fields = info.input.DESCRIPTOR.fields_by_name
    if rule.body not in ("", "*") and rule.body not in fields:
        raise ConfigError(f"{where}: body field {rule.body!r} is not a field of {info.input.DESCRIPTOR.full_name}")
    if rule.verb not in (v.upper() for v in _VERBS) and not rule.verb.isalpha():
        raise ConfigError(f"{where}: invalid verb {rule.verb!r}")
    for var in rule.template.variables:
        desc: MessageDesc | None = info.input.DESCRIPTOR
        for part in var.split("."):
            f = desc.fields_by_name.get(part) if desc is not None else None
            if f is None:
                raise ConfigError(f"{where}: {var!r} is not a field of {info.input.DESCRIPTOR.full_name}")
            desc = f.message_type
