"""Every span attribute and event name agentmesh writes, in one place.

The ``rpc.*`` and ``enduser.id`` names follow the OpenTelemetry semantic conventions; the
``agentmesh.*`` names are ours. Readers of the audit log (``agentmesh audit show``) use the same
constants, so a rename here is a rename everywhere.
"""

from __future__ import annotations

from typing import Final, Literal

from agentmesh import errors

__all__ = [
    "AGENT",
    "DECISION",
    "DELEGATION_CHAIN",
    "DELEGATION_CHECK",
    "DENIAL_REASON",
    "DENIAL_STAGE",
    "ENDUSER_ID",
    "EVENT_DENIED",
    "EVENT_GUARD",
    "GUARD_ACTION",
    "GUARD_PATTERN",
    "PAYLOAD_PREFIX",
    "PEER_SPIFFE_ID",
    "RATELIMIT_DEGRADED",
    "RATELIMIT_REMAINING",
    "ROLES",
    "RPC_GRPC_STATUS_CODE",
    "RPC_METHOD",
    "RPC_SERVICE",
    "RPC_SYSTEM",
    "RPC_SYSTEM_GRPC",
    "RULE",
    "SCOPE",
    "TARGET",
    "TXN",
    "Decision",
    "DenialStage",
    "GuardAction",
]

# -- OpenTelemetry semantic conventions ---------------------------------------------------------
RPC_SYSTEM: Final = "rpc.system"  # always RPC_SYSTEM_GRPC
RPC_SYSTEM_GRPC: Final = "grpc"
RPC_SERVICE: Final = "rpc.service"  # "agentmesh.v1.Agent"
RPC_METHOD: Final = "rpc.method"  # "Invoke"
RPC_GRPC_STATUS_CODE: Final = "rpc.grpc.status_code"  # int, grpc.StatusCode.X.value[0]
ENDUSER_ID: Final = "enduser.id"  # the verified token subject

# -- agentmesh ----------------------------------------------------------------------------------
AGENT: Final = "agentmesh.agent"  # the agent this span belongs to (server: callee, client: caller)
TARGET: Final = "agentmesh.target"  # client spans: the agent being called
PEER_SPIFFE_ID: Final = "agentmesh.peer.spiffe_id"  # server spans: the verified caller certificate
ROLES: Final = "agentmesh.roles"  # list[str] from the verified token
DECISION: Final = "agentmesh.decision"  # Decision
RULE: Final = "agentmesh.rule"  # name of the policy rule that decided
DELEGATION_CHAIN: Final = "agentmesh.delegation.chain"  # list of verified SPIFFE IDs, outermost caller first
DELEGATION_CHECK: Final = "agentmesh.delegation.check"  # which check of a delegation failed (DelegationError.check)
TXN: Final = "agentmesh.txn"  # the transaction id (txn claim of the transaction token): one per external request
SCOPE: Final = "agentmesh.scope"  # list[str]: the transaction's scope
RATELIMIT_REMAINING: Final = "agentmesh.ratelimit.remaining"  # int
RATELIMIT_DEGRADED: Final = "agentmesh.ratelimit.degraded"  # True: the backend was down, failure_mode open let it by
PAYLOAD_PREFIX: Final = "agentmesh.payload."  # + dotted request field path (allow-listed only)

Decision = Literal["allow", "deny"]

# -- events -------------------------------------------------------------------------------------
EVENT_DENIED: Final = "agentmesh.denied"  # attributes: DENIAL_STAGE, DENIAL_REASON
DENIAL_STAGE: Final = "stage"  # DenialStage
DENIAL_REASON: Final = "reason"  # safe text: never a token, key or payload

DenialStage = errors.DenialStage  # each MeshError class names its own (MeshError.stage)

EVENT_GUARD: Final = "agentmesh.guard"  # attributes: GUARD_ACTION, GUARD_PATTERN
GUARD_ACTION: Final = "action"  # GuardAction
GUARD_PATTERN: Final = "pattern"  # the name of the pattern that matched (never the matched text)

GuardAction = Literal["block", "flag"]
