"""Small helpers that put audit facts on a span in the one agreed shape (see attributes.py)."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.trace import Span

from agentmesh.audit import attributes as A
from agentmesh.audit.redact import safe_attributes

__all__ = ["record_denial", "record_guard", "rpc_attributes", "set_safe_attributes"]


def rpc_attributes(full_method: str) -> dict[str, str]:
    """``rpc.system``, ``rpc.service`` and ``rpc.method`` of "/pkg.Service/Method"."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return {A.RPC_SYSTEM: A.RPC_SYSTEM_GRPC, A.RPC_SERVICE: service, A.RPC_METHOD: method}


def set_safe_attributes(span: Span, attributes: Mapping[str, object]) -> None:
    """Sets ``attributes`` on ``span`` after redaction."""
    span.set_attributes(safe_attributes(attributes))


def record_denial(span: Span, stage: A.DenialStage, reason: str) -> None:
    """Adds the ``agentmesh.denied`` event; ``reason`` is redacted, but should be safe text anyway."""
    span.add_event(A.EVENT_DENIED, safe_attributes({A.DENIAL_STAGE: stage, A.DENIAL_REASON: reason}))


def record_guard(span: Span, action: A.GuardAction, pattern: str) -> None:
    """Adds the ``agentmesh.guard`` event: which pattern matched and whether it blocked or flagged."""
    span.add_event(A.EVENT_GUARD, safe_attributes({A.GUARD_ACTION: action, A.GUARD_PATTERN: pattern}))
