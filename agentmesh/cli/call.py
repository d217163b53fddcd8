"""``agentmesh call AGENT METHOD --json '{...}' --config FILE --as NAME``: grpcurl with a mesh identity.

The whole call (the token exchange of ``--subject-token`` included) is one trace, rooted in a span of
this command in the audit log; its id goes to stderr (or into ``-o json``), and on a failure into the
error line, for ``agentmesh audit show --trace ID``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any

import grpc
from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, format_trace_id

from agentmesh.audit import attributes as A
from agentmesh.cli.output import add_output, emit
from agentmesh.cli.usage import examples
from agentmesh.config import MeshConfig
from agentmesh.configfile import load_config
from agentmesh.errors import ConfigError, MeshError
from agentmesh.interceptors.client import delegating
from agentmesh.runtime.descriptors import MethodInfo, methods_of
from agentmesh.runtime.node import MeshNode

__all__ = ["find_method", "register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("call", help="call an agent method with a mesh identity (like grpcurl)", **examples(
        "agentmesh call summarizer Describe --config mesh.yaml --as ingestor",
        "agentmesh call ingestor Invoke --config mesh.yaml --as bridge --subject-token - "
        "--json '{\"input\":[{\"text\":\"hello\"}]}'",
        "agentmesh call ingestor agentmesh.v1.Agent/Invoke --config mesh.yaml --as bridge --subject-token - -o json",
    ))
    p.add_argument("agent")
    p.add_argument("method", help="Service/Method or Method, e.g. agentmesh.v1.Agent/Invoke or Invoke")
    p.add_argument("--json", default="{}", help="request as protobuf JSON (default {})")
    p.add_argument("--config", required=True, help="mesh config file")
    p.add_argument("--as", dest="as_", required=True, metavar="NAME", help="the mesh identity to call with")
    p.add_argument("--subject-token", metavar="TOKEN",
                   help="act for this principal: its token is exchanged at the control plane "
                        "for a transaction token ('-': read it from stdin)")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds (default 10)")
    add_output(p)
    p.set_defaults(func=_run)


class _CallFailed(MeshError):
    def __init__(self, err: grpc.aio.AioRpcError) -> None:
        super().__init__(f"{err.code().name}: {err.details()}")


def find_method(config: MeshConfig, agent: str, method: str) -> MethodInfo:
    """The method ``Service/Method`` or ``Method`` (``/`` in front or not) of ``agent``'s descriptors."""
    methods = methods_of(config.agent(agent).descriptors)
    wanted = method.lstrip("/")
    matches = [m for m in methods.values() if m.full_name[1:] == wanted or m.name == wanted]
    if len(matches) != 1:
        known = ", ".join(sorted(m.full_name[1:] for m in methods.values()))
        raise ConfigError(f"{'ambiguous' if matches else 'unknown'} method {method!r} of {agent} (known: {known})")
    return matches[0]


async def _call(args: argparse.Namespace, config: MeshConfig, trace_ids: list[str]) -> list[dict[str, Any]]:
    info = find_method(config, args.agent, args.method)
    if info.client_streaming:
        raise ConfigError(f"{info.full_name} takes a request stream; agentmesh call sends one request")
    try:
        request = json_format.Parse(args.json, info.input())
    except json_format.ParseError as e:
        raise ConfigError(f"--json: {e}") from None
    subject = sys.stdin.readline().strip() if args.subject_token == "-" else args.subject_token  # noqa: S105
    node = MeshNode(config, args.as_)
    try:
        await node.start(timeout=10)
        channel = node.channels.channel(args.agent)
        kind = channel.unary_stream if info.server_streaming else channel.unary_unary
        rpc = kind(info.full_name, request_serializer=info.input.SerializeToString,
                   response_deserializer=info.output.FromString)
        root = node.sink.tracer.start_span(f"agentmesh call {args.agent} {info.full_name[1:]}", kind=SpanKind.INTERNAL,
                                           attributes={A.AGENT: args.as_, A.TARGET: args.agent})
        trace_ids.append(format_trace_id(root.get_span_context().trace_id))
        out: list[dict[str, Any]] = []
        with trace.use_span(root, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            try:
                txn = await node.exchange(subject, route=f"{args.agent} {info.full_name}") if subject else None
                with delegating(txn.token) if txn is not None else contextlib.nullcontext():
                    if info.server_streaming:
                        async for msg in rpc(request, timeout=args.timeout):
                            out.append(json_format.MessageToDict(msg))
                    else:
                        out.append(json_format.MessageToDict(await rpc(request, timeout=args.timeout)))
            except grpc.aio.AioRpcError as e:
                root.set_status(Status(StatusCode.ERROR, e.code().name))
                raise _CallFailed(e) from None
            except MeshError as e:
                root.set_status(Status(StatusCode.ERROR, type(e).__name__))
                raise
        return out
    finally:
        await node.close()


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    trace_ids: list[str] = []
    try:
        messages = asyncio.run(_call(args, config, trace_ids))
    except MeshError as e:
        if trace_ids:
            e.add_note(f"trace {trace_ids[0]}")
        raise
    trace_id = trace_ids[0]
    audit_log = config.audit.jsonl_path if "jsonl" in config.audit.exporters else None
    show = f"; see it with: agentmesh audit show --trace {trace_id[:8]} {audit_log}" if audit_log else ""
    print(f"agentmesh: trace {trace_id}{show}", file=sys.stderr)
    emit(args.output, {"trace_id": trace_id, "responses": messages},
         lambda: (json.dumps(msg, indent=2) for msg in messages))
    return 0
