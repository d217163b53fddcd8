"""The generated OpenAPI document: operations, schemas of every JSON type, security, errors."""

from __future__ import annotations

from typing import Any

import pytest
from bridgekit import BridgeMesh

pytestmark = pytest.mark.asyncio(loop_scope="module")




async def _spec(mesh: BridgeMesh) -> dict[str, Any]:
    r = await mesh.client.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    return r.json()  # type: ignore[no-any-return]


async def test_operations_from_the_descriptors_of_each_agent(mesh: BridgeMesh) -> None:
    spec = await _spec(mesh)
    assert spec["openapi"] == "3.1.0"
    paths = spec["paths"]
    for agent in ("alpha", "beta", "down", "mute"):
        for method in ("Invoke", "InvokeStream", "Describe"):
            assert "post" in paths[f"/v1/agents/{agent}/agentmesh.v1.Agent/{method}"]
    assert "/v1/agents/beta/bridgetest.v1.Probe/Echo" not in paths  # beta does not serve the probe
    assert "/v1/agents/alpha/bridgetest.v1.Probe/Upload" not in paths  # client streaming: not exposed
    get = paths["/v1/agents/alpha/v1/things/{id}"]
    assert set(get) == {"get", "delete"}
    params = {p["name"]: p for p in get["get"]["parameters"]}
    assert params["id"]["in"] == "path" and params["id"]["required"] is True
    assert {n for n, p in params.items() if p["in"] == "query"} == {"verbose", "fields", "limit", "color"}
    assert params["fields"]["schema"]["type"] == "array"
    assert "requestBody" not in get["get"]
    put = paths["/v1/agents/alpha/v1/names/{name}"]["put"]
    ref = "#/components/schemas/bridgetest.v1.Everything"
    assert put["requestBody"]["content"]["application/json"]["schema"] == {"$ref": ref}
    assert put["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": ref}
    stream = paths["/v1/agents/alpha/bridgetest.v1.Probe/Ticks"]["post"]["responses"]["200"]["content"]
    assert set(stream) == {"application/x-ndjson", "text/event-stream"}
    assert len({op["operationId"] for item in paths.values() for op in item.values()}) == \
        sum(len(item) for item in paths.values())


async def test_security_and_errors(mesh: BridgeMesh) -> None:
    spec = await _spec(mesh)
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer",
                                                                   "bearerFormat": "JWT"}
    assert spec["security"] == [{"bearerAuth": []}]
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    invoke = spec["paths"]["/v1/agents/alpha/agentmesh.v1.Agent/Invoke"]["post"]
    assert "security" not in invoke  # the global bearer requirement applies
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["code", "message", "details"]
    assert "PERMISSION_DENIED" in error["properties"]["code"]["enum"]
    assert set(invoke["responses"]["429"]["headers"]) == {"Retry-After", "RateLimit-Limit", "RateLimit-Remaining",
                                                          "RateLimit-Reset"}
    assert "WWW-Authenticate" in invoke["responses"]["401"]["headers"]


async def test_message_schemas_follow_the_json_mapping(mesh: BridgeMesh) -> None:
    schemas = (await _spec(mesh))["components"]["schemas"]
    every = schemas["bridgetest.v1.Everything"]
    props = every["properties"]
    assert every["additionalProperties"] is False
    assert "byNumber" in props and "by_number" not in props  # lowerCamel JSON names
    assert props["i64"]["type"] == ["string", "integer", "null"] and props["i64"]["format"] == "int64"
    assert props["i32"]["maximum"] == 2**31 - 1
    assert {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]} in props["dbl"]["oneOf"]
    assert props["raw"]["format"] == "byte"
    assert props["color"] == {"anyOf": [{"$ref": "#/components/schemas/bridgetest.v1.Color"}, {"type": "null"}]}
    assert schemas["bridgetest.v1.Color"]["anyOf"][0]["enum"] == ["COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_BLUE"]
    assert props["tags"]["type"] == ["array", "null"] and props["tags"]["items"] == {"type": "string"}
    assert props["inners"]["additionalProperties"] == {"$ref": "#/components/schemas/bridgetest.v1.Inner"}
    assert props["byNumber"]["propertyNames"]["pattern"].startswith("^-?[0-9]")
    assert props["data"]["type"] == ["object", "null"]  # Struct
    assert props["at"]["format"] == "date-time" and props["wait"]["pattern"].endswith("s$")
    assert {"type": "null"} in props["maybe"]["anyOf"]  # Int64Value
    assert props["anyValue"] == {"description": "any JSON value"}
    assert props["list"]["type"] == ["array", "null"]
    assert every["not"]["anyOf"][0]["required"] == ["left", "right"]  # oneof: at most one member
    inner = schemas["bridgetest.v1.Inner"]["properties"]["child"]  # recursive
    assert inner == {"anyOf": [{"$ref": "#/components/schemas/bridgetest.v1.Inner"}, {"type": "null"}]}
    part = schemas["agentmesh.v1.Part"]["properties"]
    assert set(part) == {"text", "data", "mimeType"}
