"""The A2A skill a request asks for, for skill-level policy (``skills:`` in a policy rule). Pure.

A2A v1.0 has no field that selects a skill, so agentmesh reads the one convention clients can set
without changing the protocol: the string ``skill`` in the SendMessageRequest's ``metadata``, or in
its message's ``metadata``. A request that names two different skills is refused (which one would
the agent act on?). The mesh authorizes the skill a request names; an agent that ignores the field
and does whatever the text says is not limited by it (documented in docs/SECURITY.md).
"""

from __future__ import annotations

from typing import Any

import grpc

from agentmesh.errors import MeshError
from agentmesh.policy import SKILL_METHODS

__all__ = ["SEND_METHODS", "SKILL_KEY", "SkillError", "requested_skill"]

SKILL_KEY = "skill"
SEND_METHODS = SKILL_METHODS


class SkillError(MeshError):
    """The request names its skill in a way the mesh cannot decide on."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


def _named(struct: Any, where: str) -> str | None:
    fields = getattr(struct, "fields", None)
    if fields is None or SKILL_KEY not in fields:
        return None
    value = fields[SKILL_KEY]
    if value.WhichOneof("kind") != "string_value" or not value.string_value:
        raise SkillError(f"{where}.{SKILL_KEY} must be a non-empty string")
    return str(value.string_value)


def requested_skill(method: str, request: Any) -> str | None:
    """The skill a SendMessage / SendStreamingMessage request names (None: none, or another method)."""
    if method not in SEND_METHODS or request is None:
        return None
    top = _named(getattr(request, "metadata", None), "metadata")
    message = getattr(request, "message", None)
    inner = _named(getattr(message, "metadata", None), "message.metadata") if message is not None else None
    if top is not None and inner is not None and top != inner:
        raise SkillError("the request names two different skills (metadata.skill and message.metadata.skill)")
    return top if top is not None else inner
