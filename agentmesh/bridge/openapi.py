"""The bridge's OpenAPI 3.1 document, generated from the route catalog. Pure.

Each agent's operations are listed under its own concrete paths (tagged with the agent name): the
default ``POST`` route of every method and one operation per standard-verb ``google.api.http``
binding. Every agent operation requires a bearer JWT; errors share one ``Error`` schema.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from agentmesh.bridge.routes import PREFIX, Catalog, HttpRule, Operation
from agentmesh.bridge.schemas import REF, Schema, SchemaBuilder

if TYPE_CHECKING:
    from agentmesh.bridge.schemas import FieldDesc, MessageDesc

__all__ = ["openapi_document"]

_STANDARD_VERBS = frozenset({"GET", "PUT", "POST", "DELETE", "PATCH"})
_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": REF + "Error"}}}}
_INT_HEADER = {"schema": {"type": "integer", "minimum": 0}}
_DESCRIPTION = """\
HTTP/JSON entrypoint to the agents of this mesh. Every call is authenticated with a bearer JWT and
made over mutual TLS on the caller's behalf, through the bridge (agent policy rules with
`via: [bridge]` decide).

* Bodies use the proto3 JSON mapping: lowerCamelCase field names (original names are accepted),
  enums by name, 64-bit integers as strings; fields at their default value are omitted.
* Server-streaming methods answer NDJSON (`application/x-ndjson`), or Server-Sent Events with
  `Accept: text/event-stream`; a failure midway ends the stream with an error object/event.
* Deadline: `grpc-timeout` (e.g. `500m`, `2S`) or `X-Request-Timeout` (seconds), capped by the bridge.
* Errors: `{"code": "<gRPC status name>", "message": "...", "details": [...]}` with the HTTP status
  of that code; 429 carries `Retry-After` and `RateLimit-*` headers.
"""


def openapi_document(catalog: Catalog, *, title: str, version: str) -> dict[str, Any]:
    builder = SchemaBuilder()
    paths: dict[str, dict[str, Any]] = {
        "/healthz": {"get": _plain("alive", "liveness: the bridge process answers")},
        "/readyz": {"get": _plain("ready", "readiness: every agent answers its gRPC health check", ready=True)},
        "/" + "/".join(PREFIX): {"get": _list_operation()},
    }
    for op in catalog.operations():
        paths.setdefault(op.path, {})["post"] = _operation(op, None, builder, op.operation_id)
        for i, rule in enumerate(op.rules):
            if rule.verb not in _STANDARD_VERBS:
                continue
            operation = _operation(op, rule, builder, f"{op.operation_id}.http{i}")
            paths.setdefault(op.route(rule), {})[rule.verb.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": _DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": {**dict(sorted(builder.components.items())), **_COMMON_SCHEMAS},
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearerAuth": []}],
        "tags": [{"name": a, "description": f"agent {a}"} for a in catalog.agents],
    }


def _operation(op: Operation, rule: HttpRule | None, builder: SchemaBuilder, operation_id: str) -> dict[str, Any]:
    desc = op.info.input.DESCRIPTOR
    out: dict[str, Any] = {
        "operationId": operation_id,
        "summary": f"{op.info.service}.{op.info.name}" + (" (server stream)" if op.streaming else ""),
        "description": f"gRPC `{op.method}` on agent `{op.agent}`.",
        "tags": [op.agent],
        "responses": {"200": _ok(op, rule, builder), **_ERRORS},
    }
    params = [_path_param(desc, var) for var in (rule.template.variables if rule else ())]
    if rule is not None and rule.body != "*":
        bound = {v.split(".")[0] for v in rule.template.variables} | {rule.body}
        params.extend(_query_param(f, builder) for f in desc.fields
                      if f.name not in bound and f.message_type is None)
    if params:
        out["parameters"] = params
    if rule is None or rule.body == "*":
        body: Schema = builder.message(desc)
    elif rule.body:
        body = builder.field(desc.fields_by_name[rule.body])
    else:
        return out
    out["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
    return out


def _ok(op: Operation, rule: HttpRule | None, builder: SchemaBuilder) -> dict[str, Any]:
    out_desc = op.info.output.DESCRIPTOR
    schema = builder.field(out_desc.fields_by_name[rule.response_body]) if rule and rule.response_body \
        else builder.message(out_desc)
    if not op.streaming:
        return {"description": out_desc.full_name, "content": {"application/json": {"schema": schema}}}
    return {
        "description": f"a stream of {out_desc.full_name}: one JSON object per line (NDJSON), or Server-Sent "
                       "Events (`data: <json>`) with `Accept: text/event-stream`; a failure midway ends the "
                       'stream with `{"error": Error}` (NDJSON) or `event: error`',
        "content": {
            "application/x-ndjson": {"schema": {"type": "string"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    }


def _path_param(desc: MessageDesc, var: str) -> dict[str, Any]:
    return {"name": var, "in": "path", "required": True,
            "schema": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
            "description": f"field {var} of {desc.full_name}"}


def _query_param(field: FieldDesc, builder: SchemaBuilder) -> dict[str, Any]:
    schema = builder.field(field)
    return {"name": field.json_name, "in": "query", "required": False, "schema": schema,
            "explode": True, "description": f"field {field.name}"}


def _plain(status: str, summary: str, *, ready: bool = False) -> dict[str, Any]:
    schema = {"$ref": REF + ("Readiness" if ready else "Liveness")}
    responses: dict[str, Any] = {"200": {"description": status, "content": {"application/json": {"schema": schema}}}}
    if ready:
        responses["503"] = {"description": "not ready", "content": {"application/json": {"schema": schema}}}
    return {"operationId": f"bridge.{status}", "summary": summary, "tags": ["bridge"], "security": [],
            "responses": responses}


def _list_operation() -> dict[str, Any]:
    return {
        "operationId": "bridge.listAgents",
        "summary": "the agents and methods the caller may call through the bridge",
        "tags": ["bridge"],
        "responses": {"200": {"description": "agents", "content": {"application/json": {
            "schema": {"$ref": REF + "AgentList"}}}}, **_ERRORS},
    }


_ERRORS: dict[str, Any] = {
    "401": {**_ERROR, "description": "missing or invalid bearer token",
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}},
    "429": {**_ERROR, "description": "rate limited",
            "headers": {"Retry-After": _INT_HEADER, "RateLimit-Limit": _INT_HEADER,
                        "RateLimit-Remaining": _INT_HEADER, "RateLimit-Reset": _INT_HEADER}},
    "default": _ERROR,
}
_COMMON_SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "required": ["code", "message", "details"],
        "properties": {
            "code": {"type": "string", "enum": [c.name for c in grpc.StatusCode if c != grpc.StatusCode.OK],
                     "description": "gRPC status name; the HTTP status follows it (405, 413, 415 are HTTP-only)"},
            "message": {"type": "string"},
            "details": {"type": "array", "items": {"type": "object", "properties": {"@type": {"type": "string"}}},
                        "description": "google.rpc error details (e.g. RetryInfo) in their JSON form"},
        },
    },
    "Liveness": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
    "Readiness": {"type": "object", "required": ["status"], "properties": {
        "status": {"type": "string", "enum": ["ready", "unready"]},
        "unready": {"type": "array", "items": {"type": "string"}}}},
    "AgentList": {"type": "object", "required": ["agents"], "properties": {"agents": {"type": "array", "items": {
        "type": "object", "required": ["name", "methods"], "properties": {
            "name": {"type": "string"},
            "methods": {"type": "array", "items": {"type": "object", "properties": {
                "method": {"type": "string"}, "path": {"type": "string"},
                "serverStreaming": {"type": "boolean"},
                "bindings": {"type": "array", "items": {"type": "object", "properties": {
                    "httpMethod": {"type": "string"}, "path": {"type": "string"}}}},
            }}},
        }}}}},
}
