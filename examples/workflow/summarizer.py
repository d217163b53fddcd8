"""The summarizer: an extractive summary by sentence scoring, then a verdict from the validator."""

from __future__ import annotations

from collections import Counter

import grpc

from agentmesh import MeshNode
from agentmesh.v1 import agent_pb2, agent_pb2_grpc
from examples.workflow.downstream import ask
from examples.workflow.text import content_words, sentences

SUMMARY_SENTENCES = 3


def summarize(text: str, n: int = SUMMARY_SENTENCES) -> str:
    """Scores each sentence by the document frequency of its content words (normalised by length,
    with a small bonus for leading sentences); keeps the best ``n`` in their original order."""
    sents = sentences(text)
    freq = Counter(content_words(text))
    scored = []
    for i, s in enumerate(sents):
        ws = content_words(s)
        if not ws:
            continue
        score = sum(freq[w] for w in ws) / (len(ws) ** 0.5) + (0.5 if i == 0 else 0.0)
        scored.append((score, -i, i))
    keep = sorted(i for _, _, i in sorted(scored, reverse=True)[:n])
    return " ".join(sents[i] for i in keep)


class Summarizer(agent_pb2_grpc.AgentServicer):
    def __init__(self, node: MeshNode) -> None:
        self.validator = node.stub("validator", agent_pb2_grpc.AgentStub)

    async def Invoke(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> agent_pb2.TaskResult:
        source = "\n\n".join(p.text for p in request.input if p.HasField("text"))
        if not source.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "nothing to summarize")
        summary = summarize(source)
        verdict = await ask(self.validator.Invoke(agent_pb2.Task(
            id=f"{request.id}/validate", parent_task_id=request.id,
            input=[agent_pb2.Part(text=source), agent_pb2.Part(text=summary)],
        )), context, "validator")
        return agent_pb2.TaskResult(
            task_id=request.id, status=verdict.status,
            output=[agent_pb2.Part(text=summary, mime_type="text/plain"), *verdict.output],
        )
