"""The validator: checks a summary against its source (key-term coverage, length, forbidden content)."""

from __future__ import annotations

import re

import grpc
from google.protobuf import struct_pb2

from agentmesh.v1 import agent_pb2, agent_pb2_grpc
from examples.workflow.text import key_terms, words

MIN_COVERAGE = 0.5
MIN_WORDS, MAX_RATIO = 8, 0.6
FORBIDDEN = {
    "credential": re.compile(r"(?i)\b(password|api[_ -]?key|secret[_ -]?key)\s*[:=]"),
    "url": re.compile(r"https?://"),
    "email": re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.]+\b"),
}


def validate(source: str, summary: str) -> dict[str, object]:
    terms = key_terms(source)
    present = set(words(summary))
    covered = [t for t in terms if t in present]
    coverage = len(covered) / len(terms) if terms else 1.0
    n, limit = len(words(summary)), max(MIN_WORDS, int(len(words(source)) * MAX_RATIO))
    forbidden = sorted(name for name, rx in FORBIDDEN.items() if rx.search(summary))
    checks = {
        "coverage": coverage >= MIN_COVERAGE,
        "length": MIN_WORDS <= n <= limit,
        "forbidden_content": not forbidden,
    }
    return {
        "verdict": "pass" if all(checks.values()) else "fail",
        "coverage": round(coverage, 2),
        "key_terms": terms,
        "missing_terms": [t for t in terms if t not in present],
        "summary_words": n,
        "max_words": limit,
        "forbidden": forbidden,
        "checks": checks,
    }


class Validator(agent_pb2_grpc.AgentServicer):
    async def Invoke(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> agent_pb2.TaskResult:
        texts = [p.text for p in request.input if p.HasField("text")]
        if len(texts) != 2:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected two text parts: source, summary")
        report = validate(texts[0], texts[1])
        data = struct_pb2.Struct()
        data.update(report)
        ok = report["verdict"] == "pass"
        return agent_pb2.TaskResult(
            task_id=request.id,
            status=agent_pb2.TASK_STATUS_COMPLETED if ok else agent_pb2.TASK_STATUS_REJECTED,
            output=[agent_pb2.Part(data=data)],
        )
