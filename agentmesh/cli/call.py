"""``agentmesh call AGENT METHOD --json '{...}' --config FILE --as NAME``: grpcurl with a mesh identity."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any

import grpc
from google.protobuf import json_format

from agentmesh.configfile import load_config
from agentmesh.errors import ConfigError, MeshError
from agentmesh.interceptors.client import delegating
from agentmesh.runtime.descriptors import methods_of
from agentmesh.runtime.node import MeshNode

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("call", help="call an agent method with a mesh identity (like grpcurl)")
    p.add_argument("agent")
    p.add_argument("method", help="Service/Method or Method, e.g. agentmesh.v1.Agent/Invoke or Invoke")
    p.add_argument("--json", default="{}", help="request as protobuf JSON (default {})")
    p.add_argument("--config", required=True, help="mesh config file")
    p.add_argument("--as", dest="as_", required=True, metavar="NAME", help="the mesh identity to call with")
    p.add_argument("--subject-token", metavar="TOKEN",
                   help="act for this principal: its token is exchanged at the control plane "
                        "for a transaction token ('-': read it from stdin)")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds (default 10)")
    p.set_defaults(func=_run)


class _CallFailed(MeshError):
    def __init__(self, err: grpc.aio.AioRpcError) -> None:
        super().__init__(f"{err.code().name}: {err.details()}")


async def _call(args: argparse.Namespace) -> list[dict[str, Any]]:
    config = load_config(args.config)
    agent = config.agent(args.agent)
    methods = methods_of(agent.descriptors)
    wanted = args.method.lstrip("/")
    matches = [m for m in methods.values() if m.full_name[1:] == wanted or m.name == wanted]
    if len(matches) != 1:
        known = ", ".join(sorted(m.full_name[1:] for m in methods.values()))
        raise ConfigError(f"{'ambiguous' if matches else 'unknown'} method {args.method!r} (known: {known})")
    info = matches[0]
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
        out: list[dict[str, Any]] = []
        txn = await node.exchange(subject, route=f"{args.agent} {info.full_name}") if subject else None
        try:
            with delegating(txn.token) if txn is not None else contextlib.nullcontext():
                if info.server_streaming:
                    async for msg in rpc(request, timeout=args.timeout):
                        out.append(json_format.MessageToDict(msg))
                else:
                    out.append(json_format.MessageToDict(await rpc(request, timeout=args.timeout)))
        except grpc.aio.AioRpcError as e:
            raise _CallFailed(e) from None
        return out
    finally:
        await node.close()


def _run(args: argparse.Namespace) -> int:
    for msg in asyncio.run(_call(args)):
        print(json.dumps(msg, indent=2))
    return 0
