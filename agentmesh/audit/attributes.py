"""Every span attribute and event name agentmesh writes, in one place.

The names outside ``agentmesh.*`` follow the OpenTelemetry semantic conventions v1.44 (the
``opentelemetry-semantic-conventions`` package: stable ``attributes/`` for HTTP, server, client,
network, url and error; ``_incubating/attributes/rpc_attributes.py`` for RPC); the ``agentmesh.*``
names are ours. Readers of the audit log (``agentmesh audit show``) use the same constants, so a
rename here is a rename everywhere; the ``LEGACY_*`` names are those of audit logs written before
(read, never written).
"""

from __future__ import annotations

from typing import Final, Literal

from agentmesh import errors

__all__ = [
    "AGENT",
    "CLIENT_ADDRESS",
    "DECISION",
    "DELEGATION_CHAIN",
    "DELEGATION_CHECK",
    "DENIAL_REASON",
    "DENIAL_STAGE",
    "ENDUSER_ID",
    "ERROR_TYPE",
    "ERROR_TYPE_OTHER",
    "EVENT_DENIED",
    "EVENT_GUARD",
    "GUARD_ACTION",
    "GUARD_PATTERN",
    "HTTP_REQUEST_METHOD",
    "HTTP_RESPONSE_STATUS_CODE",
    "HTTP_ROUTE",
    "LEGACY_RPC_GRPC_STATUS_CODE",
    "LEGACY_RPC_SERVICE",
    "LEGACY_RPC_SYSTEM",
    "NETWORK_PEER_ADDRESS",
    "NETWORK_PEER_PORT",
    "OTHER",
    "PAYLOAD_PREFIX",
    "PEER_SPIFFE_ID",
    "RATELIMIT_DEGRADED",
    "RATELIMIT_REMAINING",
    "REQUEST_ID",
    "ROLES",
    "RPC_METHOD",
    "RPC_RESPONSE_STATUS_CODE",
    "RPC_SYSTEM_GRPC",
    "RPC_SYSTEM_NAME",
    "RULE",
    "SCOPE",
    "SERVER_ADDRESS",
    "SERVER_PORT",
    "TARGET",
    "TXN",
    "URL_PATH",
    "URL_SCHEME",
    "Decision",
    "DenialStage",
    "GuardAction",
]

# -- OpenTelemetry semantic conventions ---------------------------------------------------------
#: a method (or HTTP verb) the server does not know: its name is the caller's choice, never recorded
#: (no ``rpc.method_original``, no ``http.request.method_original``)
OTHER: Final = "_OTHER"
RPC_SYSTEM_NAME: Final = "rpc.system.name"  # always RPC_SYSTEM_GRPC
RPC_SYSTEM_GRPC: Final = "grpc"
RPC_METHOD: Final = "rpc.method"  # "agentmesh.v1.Agent/Invoke" (fully qualified), or OTHER
RPC_RESPONSE_STATUS_CODE: Final = "rpc.response.status_code"  # the status name: "OK", "PERMISSION_DENIED"
ERROR_TYPE: Final = "error.type"  # the status name of a call that did not end OK; "500" for HTTP
ERROR_TYPE_OTHER: Final = "_OTHER"  # error.type of a call that ended before it had a status
SERVER_ADDRESS: Final = "server.address"  # client spans: the host the caller dialled
SERVER_PORT: Final = "server.port"  # int
NETWORK_PEER_ADDRESS: Final = "network.peer.address"  # server spans: the connection's remote IP
NETWORK_PEER_PORT: Final = "network.peer.port"  # int
CLIENT_ADDRESS: Final = "client.address"  # the bridge's HTTP spans: the client's IP
HTTP_REQUEST_METHOD: Final = "http.request.method"  # "GET", "POST"... or OTHER
HTTP_ROUTE: Final = "http.route"  # the route template that matched (as in openapi.json), never the raw path
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"  # int
URL_SCHEME: Final = "url.scheme"  # "https" | "http"
URL_PATH: Final = "url.path"  # the raw path, printable and bounded; never the query string
ENDUSER_ID: Final = "enduser.id"  # the verified token subject

#: names of audit logs written before the v1.44 conventions: "/pkg.Service/Method" span names,
#: ``rpc.service`` + short ``rpc.method``, and the status as an int
LEGACY_RPC_SYSTEM: Final = "rpc.system"
LEGACY_RPC_SERVICE: Final = "rpc.service"  # "agentmesh.v1.Agent" (and "rpc.method": "Invoke")
LEGACY_RPC_GRPC_STATUS_CODE: Final = "rpc.grpc.status_code"  # int, grpc.StatusCode.X.value[0]

# -- agentmesh ----------------------------------------------------------------------------------
AGENT: Final = "agentmesh.agent"  # the agent this span belongs to (server: callee, client: caller)
TARGET: Final = "agentmesh.target"  # client spans (and the bridge's HTTP spans): the agent being called
PEER_SPIFFE_ID: Final = "agentmesh.peer.spiffe_id"  # server spans: the verified caller certificate
ROLES: Final = "agentmesh.roles"  # list[str] from the verified token
DECISION: Final = "agentmesh.decision"  # Decision
RULE: Final = "agentmesh.rule"  # name of the policy rule that decided
DELEGATION_CHAIN: Final = "agentmesh.delegation.chain"  # list of verified SPIFFE IDs, outermost caller first
DELEGATION_CHECK: Final = "agentmesh.delegation.check"  # which check of a delegation failed (DelegationError.check)
TXN: Final = "agentmesh.txn"  # the transaction id (txn claim of the transaction token): one per external request
REQUEST_ID: Final = "agentmesh.request_id"  # the bridge's x-request-id, on every span of the request
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
