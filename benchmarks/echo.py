"""The one handler every variant serves, and the one request every variant sends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc

from agentmesh.v1 import agent_pb2, agent_pb2_grpc

__all__ = ["TEXT", "Echo", "http_body", "request"]

TEXT = "hello agentmesh, summarise this short text please"
METHOD = "/agentmesh.v1.Agent/Invoke"


def request() -> agent_pb2.Task:
    return agent_pb2.Task(id="bench-1", input=[agent_pb2.Part(text=TEXT)])


def http_body() -> bytes:
    """The same request as JSON (protobuf JSON mapping), for the HTTP variants."""
    return json.dumps({"id": "bench-1", "input": [{"text": TEXT}]}, separators=(",", ":")).encode()


class Echo(agent_pb2_grpc.AgentServicer):
    """Answers with the input text; no work of its own, so the numbers are the plumbing's."""

    async def Invoke(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> agent_pb2.TaskResult:
        text = request.input[0].text if request.input else ""
        return agent_pb2.TaskResult(task_id=request.id, status=agent_pb2.TASK_STATUS_COMPLETED,
                                    output=[agent_pb2.Part(text=text)])

    async def InvokeStream(self, request: agent_pb2.Task,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.TaskEvent]:
        yield agent_pb2.TaskEvent(task_id=request.id, result=await self.Invoke(request, context))

    async def Describe(self, request: agent_pb2.DescribeRequest,
                       context: grpc.aio.ServicerContext) -> agent_pb2.AgentCard:
        return agent_pb2.AgentCard(name="echo")
