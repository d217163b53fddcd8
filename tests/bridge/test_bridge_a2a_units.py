"""The pure parts of the bridge's A2A bindings: error shapes, JSON-RPC request parsing, service parameters."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from a2a.utils.errors import A2A_ERROR_REASONS, JSON_RPC_ERROR_CODE_MAP

from agentmesh.bridge.a2a_errors import JSONRPC_CODES, MESH_ERROR, jsonrpc_error, rest_body
from agentmesh.bridge.edge import forwarded_metadata, returned_headers
from agentmesh.bridge.errors import HttpError
from agentmesh.bridge.jsonrpc import RpcError, parse_request
from agentmesh.bridge.routes import Catalog, Operation
from agentmesh.runtime.descriptors import methods_of

TASK_NOT_FOUND = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "TASK_NOT_FOUND",
                  "domain": "a2a-protocol.org"}


def test_jsonrpc_codes_are_the_sdks() -> None:
    sdk = {reason: JSON_RPC_ERROR_CODE_MAP[cls] for cls, reason in A2A_ERROR_REASONS.items()}
    assert dict(JSONRPC_CODES) == sdk


def test_an_agents_a2a_error_passes_as_it_came() -> None:
    err = HttpError(grpc.StatusCode.NOT_FOUND, "Task not found", details=[TASK_NOT_FOUND])
    assert rest_body(err) == {"error": {"code": 404, "status": "NOT_FOUND", "message": "Task not found",
                                        "details": [TASK_NOT_FOUND]}}
    assert jsonrpc_error(err) == (200, {"code": -32001, "message": "Task not found", "data": [TASK_NOT_FOUND]})


def test_a_mesh_refusal_keeps_its_status_with_the_meshs_error_info() -> None:
    retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}
    err = HttpError(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limited", details=[retry])
    info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMITED", "domain": "agentmesh",
            "metadata": {}}
    assert rest_body(err)["error"] == {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "rate limited",
                                       "details": [info, retry]}
    assert jsonrpc_error(err) == (429, {"code": MESH_ERROR, "message": "rate limited", "data": [info, retry]})
    denied = HttpError(grpc.StatusCode.PERMISSION_DENIED, "no")
    assert rest_body(denied)["error"]["details"][0]["reason"] == "PERMISSION_DENIED"
    assert jsonrpc_error(denied)[0] == 403


def test_internal_errors_are_jsonrpc_internal() -> None:
    err = HttpError(grpc.StatusCode.INTERNAL, "agent 'travel' failed to handle the request")
    status, error = jsonrpc_error(err)
    assert (status, error["code"]) == (200, -32603)
    assert rest_body(err)["error"]["code"] == 500


@pytest.fixture(scope="module")
def methods() -> dict[str, Operation]:
    ops = [Operation("travel", info) for info in methods_of(("a2a.types.a2a_pb2",)).values()]
    return {op.info.name: op for op in Catalog(ops).operations("travel")}


def _parse(doc: Any, methods: dict[str, Operation]) -> tuple[Any, Operation, Any]:
    return parse_request(json.dumps(doc).encode() if not isinstance(doc, bytes) else doc, methods)


@pytest.mark.parametrize(("doc", "code", "rpc_id"), [
    (b"", -32700, None),
    (b"{", -32700, None),
    (b'{"id": 1, "id": 2}', -32700, None),
    ("[]", -32600, None),
    ([{"jsonrpc": "2.0", "id": 1, "method": "GetTask"}], -32600, None),
    ({"jsonrpc": "2.0", "id": True, "method": "GetTask"}, -32600, None),
    ({"jsonrpc": "2.0", "id": 1.5, "method": "GetTask"}, -32600, None),
    ({"jsonrpc": "2.0", "id": {"a": 1}, "method": "GetTask"}, -32600, None),
    ({"jsonrpc": "2.0", "method": "GetTask"}, -32600, None),
    ({"jsonrpc": "2.1", "id": "a", "method": "GetTask"}, -32600, "a"),
    ({"jsonrpc": "2.0", "id": "a", "method": "GetTask", "extra": 1}, -32600, "a"),
    ({"jsonrpc": "2.0", "id": "a", "method": 3}, -32600, "a"),
    ({"jsonrpc": "2.0", "id": "a", "method": "tasks/get"}, -32601, "a"),
    ({"jsonrpc": "2.0", "id": "a", "method": "GetTask", "params": ["x"]}, -32602, "a"),
    ({"jsonrpc": "2.0", "id": "a", "method": "GetTask", "params": {"nope": 1}}, -32602, "a"),
    ({"jsonrpc": "2.0", "id": 4, "method": "GetTask", "params": {"historyLength": "many"}}, -32602, 4),
])
def test_parse_request_refusals(methods: dict[str, Operation], doc: Any, code: int, rpc_id: Any) -> None:
    with pytest.raises(RpcError) as err:
        _parse(doc if not isinstance(doc, str) else doc.encode(), methods)
    assert (err.value.code, err.value.rpc_id) == (code, rpc_id)


def test_parse_request(methods: dict[str, Operation]) -> None:
    rpc_id, op, message = _parse({"jsonrpc": "2.0", "id": "7", "method": "GetTask",
                                  "params": {"id": "t1", "historyLength": 2}}, methods)
    assert (rpc_id, op.method, message.id, message.history_length) == ("7", "/lf.a2a.v1.A2AService/GetTask", "t1", 2)
    rpc_id, op, message = _parse({"jsonrpc": "2.0", "id": None, "method": "ListTasks"}, methods)
    assert rpc_id is None and op.info.name == "ListTasks" and op.streaming is False
    assert _parse({"jsonrpc": "2.0", "id": 1, "method": "SubscribeToTask", "params": {"id": "t"}},
                  methods)[1].streaming


def test_service_parameters_both_ways() -> None:
    ext = "https://ext.example/a, https://ext.example/b"
    headers = [("A2A-Extensions", ext), ("a2a-version", "1.0"), ("A2A-Extensions", "bad\x01value"),
               ("a2a-version", " " * 3), ("A2A-Other", "x")]
    assert forwarded_metadata(headers, "rid") == [("x-request-id", "rid"), ("a2a-extensions", ext),
                                                  ("a2a-version", "1.0")]
    returned = [("a2a-extensions", "https://ext.example/a"), ("a2a-extensions", "https://ext.example/b"),
                ("a2a-version", "1.0"), ("a2a-extensions-bin", b"\x00"), ("x-secret", "s"), ("a2a-version", "\x7f")]
    assert returned_headers(returned) == {"A2A-Extensions": ext, "A2A-Version": "1.0"}
    assert returned_headers([]) == {}


@pytest.mark.parametrize(("verb", "path", "method"), [
    ("GET", "tasks/t-1", "GetTask"),
    ("GET", "tasks/t-1:subscribe", "SubscribeToTask"),  # the ":verb" template wins over GetTask's "*"
    ("POST", "tasks/t-1:cancel", "CancelTask"),
    ("GET", "acme/tasks/t-1:subscribe", "SubscribeToTask"),  # the tenant form
    ("GET", "acme/tasks/t-1", "GetTask"),
])
def test_a_template_with_a_verb_is_the_more_specific(verb: str, path: str, method: str) -> None:
    ops = [Operation("travel", info) for info in methods_of(("a2a.types.a2a_pb2",)).values()]
    from agentmesh.bridge.routes import http_rules

    catalog = Catalog([Operation(op.agent, op.info, http_rules(op.info.descriptor)) for op in ops])
    match = catalog.match(verb, ["v1", "agents", "travel", *path.split("/")])
    assert match.op.info.name == method


def test_service_parameters_are_bounded_in_total() -> None:
    one = ("A2A-Extensions", "https://example.org/ext/" + "x" * 970)
    assert len(forwarded_metadata([one] * 3, "r")) == 4  # within 4 KiB: forwarded
    with pytest.raises(HttpError) as e:  # 28 such headers overran the agent's 32 KiB metadata limit (a 429)
        forwarded_metadata([one] * 28, "r")
    assert e.value.status == 431 and "A2A service parameters" in e.value.message
