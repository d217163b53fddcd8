"""The ingestor: receives a document, splits it into sections, and passes it to the summarizer."""

from __future__ import annotations

import grpc
from google.protobuf import struct_pb2

from agentmesh import MeshNode, current_call
from agentmesh.v1 import agent_pb2, agent_pb2_grpc
from examples.workflow.downstream import ask
from examples.workflow.text import split_sections

MAX_DOCUMENT = 200_000


class Ingestor(agent_pb2_grpc.AgentServicer):
    def __init__(self, node: MeshNode) -> None:
        self.summarizer = node.stub("summarizer", agent_pb2_grpc.AgentStub)

    async def Invoke(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> agent_pb2.TaskResult:
        document = "\n\n".join(p.text for p in request.input if p.HasField("text"))
        if not document.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the task has no text input (the document)")
        if len(document) > MAX_DOCUMENT:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"document over {MAX_DOCUMENT} characters")
        sections = split_sections(document)
        outline = struct_pb2.Struct()
        outline.update({"sections": [t for t, _ in sections], "requested_by": current_call().principal or ""})
        parts = [agent_pb2.Part(text=body, mime_type="text/plain") for _, body in sections]
        result = await ask(self.summarizer.Invoke(agent_pb2.Task(
            id=f"{request.id}/summarize", parent_task_id=request.id, input=[*parts, agent_pb2.Part(data=outline)],
        )), context, "summarizer")
        result.task_id = request.id
        result.output.append(agent_pb2.Part(data=outline))
        return result

    async def Describe(self, request: agent_pb2.DescribeRequest,
                       context: grpc.aio.ServicerContext) -> agent_pb2.AgentCard:
        return agent_pb2.AgentCard(name="ingestor", description="splits documents and starts the summary",
                                   skills=[agent_pb2.Skill(name="ingest", description="text or Markdown in")])
