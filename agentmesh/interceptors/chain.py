"""The order of the server chain, in one place.

    1. audit span     outermost, so denials are recorded too; maps errors to status
    2-4. admission    2. peer identity: SPIFFE ID from the verified certificate; CRL; EKU / CA checks
                      3. token: the peer's own bound token (+ the transaction token and hop links when
                         delegated)
                      4. authorization: deny rules, then allow rules, then default deny
                      one stage: an admitted call's decision is reused by the next call with the same
                      certificate, token headers and method while agentmesh.admission.still_admitted
                      holds (trust data, key set, every expiry re-checked per call)
    5. rate limit     token bucket per (rule, verified principal)
    6. payload guard  size and patterns of every request message
       (with audit.payload_fields, the allow-listed request fields are recorded, redacted, just before it)
    7. task owner     A2A (lf.a2a.v1.A2AService) only: a task named by another principal is NOT_FOUND; the
                      tasks a response reveals are recorded as the caller's; ListTasks shows the caller's own

Stages 1-5 and 7 decide before the handler, in this order; the guard (6) reads each request message as
the handler receives it, so after every ``before``. The task-owner stage goes last: a caller that is
refused or rate limited never reaches the task-owner store. It also reviews the responses of the A2A
methods that reveal tasks; no other method has a response step (decided once per method).

Health checks (exempt from the chain) pass the certificate checks alone (2).
A method the server does not serve passes 1-4 (the span, who is calling, whether it may call), then is
UNIMPLEMENTED: a caller without a valid token, or one the policy refuses, cannot tell which methods exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from agentmesh.a2a.ownership import MemoryTaskOwners, TaskOwners
from agentmesh.audit import AuditSink
from agentmesh.context import CallContext
from agentmesh.errors import AuditUnavailable
from agentmesh.guard import PayloadGuard
from agentmesh.interceptors.active import ActiveCalls
from agentmesh.interceptors.audit import AuditStage, PayloadRecordStage
from agentmesh.interceptors.auth import AdmissionStage
from agentmesh.interceptors.base import ServerChain
from agentmesh.interceptors.identity import PeerIdentityCache, PeerIdentityStage
from agentmesh.interceptors.limits import PayloadGuardStage, RateLimitStage
from agentmesh.interceptors.stage import Stage
from agentmesh.interceptors.tasks import TaskOwnershipStage
from agentmesh.policy import PolicyEngine
from agentmesh.ratelimit import RateLimiter
from agentmesh.tokens.delegation import Checks
from agentmesh.trust import TrustSnapshot

__all__ = ["AUDIT_REQUIRED_EXEMPT", "audit_only_chain", "identity_chain", "server_chain"]

#: The control plane's methods served while ``audit.required``'s exporter is down: the read-only trust
#: distribution only. The trust stream carries revocations, the key set and the bundle to every member;
#: cutting it when the audit log fails would keep revoked certificates and tokens accepted, the opposite of
#: failing closed. Every other method (and the join port's) issues or changes something (certificates,
#: agent and transaction tokens, signed cards) and is refused UNAVAILABLE while the exporter is down.
AUDIT_REQUIRED_EXEMPT = frozenset({"/agentmesh.v1.IdentityService/WatchTrust"})


def server_chain(
    agent: str,
    *,
    sink: AuditSink | None,
    audit_required: bool,
    identities: PeerIdentityCache,
    checks: Checks,
    snapshot: Callable[[], TrustSnapshot | None],
    policy: PolicyEngine,
    limiter: RateLimiter,
    guard: PayloadGuard,
    active: ActiveCalls | None = None,
    me: str,
    tasks: TaskOwners | None = None,
) -> list[grpc.aio.ServerInterceptor]:
    """The whole chain; ``tasks`` keeps the owners of A2A tasks (default: in memory, A2AConfig's bounds)."""
    record = [PayloadRecordStage(sink)] if sink is not None and sink.payload_fields else []
    who = [AdmissionStage(identities, checks, policy, me=me, snapshot=snapshot)]
    return [ServerChain(AuditStage(agent, sink, required=audit_required), [
        *who,
        RateLimitStage(limiter),
        *record,  # only with audit.payload_fields: allow-listed request fields, redacted, on the span
        PayloadGuardStage(guard),
        TaskOwnershipStage(tasks if tasks is not None else MemoryTaskOwners()),
    ], active=active, unregistered=who, exempt=[PeerIdentityStage(identities)])]


class _AuditRequired(Stage):
    """``audit.required`` on the control plane: refuses each method but :data:`AUDIT_REQUIRED_EXEMPT` while
    the required exporter is down (the server chain's audit stage refuses every call)."""

    def __init__(self, sink: AuditSink) -> None:
        self.sink = sink

    def applies_to(self, method: str) -> bool:
        return method not in AUDIT_REQUIRED_EXEMPT

    async def before(self, call: CallContext, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if not self.sink.available():
            raise AuditUnavailable(f"audit sink unavailable ({', '.join(self.sink.required or ('all',))}) "
                                   "and audit.required is set")


def _required(sink: AuditSink | None, audit_required: bool) -> list[Stage]:
    return [_AuditRequired(sink)] if audit_required and sink is not None else []


def identity_chain(agent: str, *, sink: AuditSink | None, audit_required: bool, identities: PeerIdentityCache,
                   active: ActiveCalls | None = None) -> list[grpc.aio.ServerInterceptor]:
    """The chain of the control plane: ``audit.required`` (but for :data:`AUDIT_REQUIRED_EXEMPT`), then
    certificate identity only (agents have no token yet); a method it does not serve is UNIMPLEMENTED after
    the certificate checks, and audited."""
    return [ServerChain(AuditStage(agent, sink), [*_required(sink, audit_required), PeerIdentityStage(identities)],
                        active=active)]


def audit_only_chain(agent: str, *, sink: AuditSink | None, audit_required: bool) -> list[grpc.aio.ServerInterceptor]:
    """The chain of the control plane's join port: its callers have no certificate yet; a join is refused
    while ``audit.required``'s exporter is down; every attempt (refused ones, and those to a method it does
    not serve, too) is an audit span."""
    return [ServerChain(AuditStage(agent, sink), _required(sink, audit_required))]
