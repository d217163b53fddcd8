"""The REST bridge: HTTPS/JSON for external clients, transcoded to gRPC calls over mTLS.

The bridge is a mesh member (``bridge.name``, its own certificate). It verifies the caller's JWT,
then calls agents through the same client chain as any agent, delegating for that caller; the
agents' policies decide (rules with ``via: [bridge]``).

::

    app.py         create_app: routes, middleware, lifespan
    gateway.py     one HTTP request -> one gRPC call (auth, route, transcode, call, answer); the call path
                   both REST and JSON-RPC take
    jsonrpc.py     A2A's JSON-RPC 2.0 binding at each A2A agent's base URL (SSE for its streams)
    a2a_errors.py  A2A's error shapes: the REST envelope with google.rpc.ErrorInfo, JSON-RPC error objects
    cards.py       A2A discovery: agent cards (signed by the control plane, cached) and the mesh JWKS
    edge.py        pure edge decisions: raw path, bearer token, deadline, forwarded headers
    routes.py      operations from the protobuf descriptors (default + google.api.http routes)
    template.py    google.api.http path templates
    transcode.py   JSON <-> protobuf (proto3 JSON mapping)
    checks.py      what json_format lets through: nesting depth, bools for enums, loose base64...
    streaming.py   server streams as NDJSON or Server-Sent Events
    errors.py      the error body and gRPC status -> HTTP status, headers and details
    schemas.py     JSON Schema of messages;  openapi.py  the OpenAPI 3.1 document
    middleware.py  server span, access log, request id, strict CORS
    health.py      readiness probes;  server.py  serve() with uvicorn
"""

from agentmesh.bridge.app import create_app
from agentmesh.bridge.server import serve

__all__ = ["create_app", "serve"]
