"""The span attribute names and values agentmesh writes against the OpenTelemetry semantic conventions v1.44
as the installed ``opentelemetry-semantic-conventions`` package spells them, and the pure helpers of
agentmesh/audit/spans.py against the conventions' own examples (docs/rpc/grpc.md, rpc-spans.md)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from opentelemetry.semconv._incubating.attributes import enduser_attributes, rpc_attributes
from opentelemetry.semconv.attributes import (
    client_attributes,
    error_attributes,
    http_attributes,
    network_attributes,
    server_attributes,
    url_attributes,
)

from agentmesh.audit import attributes as A
from agentmesh.audit.spans import (
    SERVER_ERROR_CODES,
    STATUS_ATTRIBUTES,
    peer_attributes,
    rpc_span_name,
    safe_request_id,
    server_address,
)
from agentmesh.audit.spans import rpc_attributes as rpc_of


def test_every_convention_name_is_the_packages() -> None:
    assert (A.RPC_SYSTEM_NAME, A.RPC_METHOD, A.RPC_RESPONSE_STATUS_CODE) == (
        rpc_attributes.RPC_SYSTEM_NAME, rpc_attributes.RPC_METHOD, rpc_attributes.RPC_RESPONSE_STATUS_CODE)
    assert A.RPC_SYSTEM_GRPC == rpc_attributes.RpcSystemNameValues.GRPC.value
    assert (A.LEGACY_RPC_SYSTEM, A.LEGACY_RPC_SERVICE, A.LEGACY_RPC_GRPC_STATUS_CODE) == (
        rpc_attributes.RPC_SYSTEM, rpc_attributes.RPC_SERVICE, rpc_attributes.RPC_GRPC_STATUS_CODE)
    assert (A.HTTP_REQUEST_METHOD, A.HTTP_ROUTE, A.HTTP_RESPONSE_STATUS_CODE) == (
        http_attributes.HTTP_REQUEST_METHOD, http_attributes.HTTP_ROUTE, http_attributes.HTTP_RESPONSE_STATUS_CODE)
    assert (A.URL_SCHEME, A.URL_PATH) == (url_attributes.URL_SCHEME, url_attributes.URL_PATH)
    assert (A.SERVER_ADDRESS, A.SERVER_PORT) == (server_attributes.SERVER_ADDRESS, server_attributes.SERVER_PORT)
    assert A.CLIENT_ADDRESS == client_attributes.CLIENT_ADDRESS
    assert (A.NETWORK_PEER_ADDRESS, A.NETWORK_PEER_PORT) == (
        network_attributes.NETWORK_PEER_ADDRESS, network_attributes.NETWORK_PEER_PORT)
    assert A.ERROR_TYPE == error_attributes.ERROR_TYPE
    assert A.ERROR_TYPE_OTHER == error_attributes.ErrorTypeValues.OTHER.value
    assert A.ENDUSER_ID == enduser_attributes.ENDUSER_ID
    ours = [v for k, v in vars(A).items() if k.isupper() and isinstance(v, str) and "." in v
            and not k.startswith(("LEGACY_", "PAYLOAD_"))]
    deprecated = {rpc_attributes.RPC_SYSTEM, rpc_attributes.RPC_SERVICE, rpc_attributes.RPC_GRPC_STATUS_CODE}
    assert not deprecated & set(ours), "a deprecated name is still written"


def test_the_rpc_attributes_of_a_served_method_and_of_one_not_served() -> None:
    assert rpc_of("/agentmesh.v1.Agent/Invoke") == {"rpc.system.name": "grpc",
                                                    "rpc.method": "agentmesh.v1.Agent/Invoke"}
    assert rpc_span_name("/agentmesh.v1.Agent/Invoke") == "agentmesh.v1.Agent/Invoke"
    assert rpc_of(None) == {"rpc.system.name": "grpc", "rpc.method": "_OTHER"}  # no rpc.method_original
    assert rpc_span_name(None) == "grpc"  # rpc-spans.md: {rpc.system.name} when rpc.method is _OTHER


def test_only_the_server_failures_make_a_server_span_an_error() -> None:
    assert {c.name for c in SERVER_ERROR_CODES} == {
        "UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}  # grpc.md
    assert dict(STATUS_ATTRIBUTES[grpc.StatusCode.OK]) == {"rpc.response.status_code": "OK"}
    assert dict(STATUS_ATTRIBUTES[grpc.StatusCode.PERMISSION_DENIED]) == {
        "rpc.response.status_code": "PERMISSION_DENIED", "error.type": "PERMISSION_DENIED"}
    assert len(STATUS_ATTRIBUTES) == len(grpc.StatusCode)


@pytest.mark.parametrize(("target", "expected"), [
    # grpc.md, server.address note: the examples
    ("grpc.io:50051", {"server.address": "grpc.io", "server.port": 50051}),
    ("dns://1.2.3.4/grpc.io:50051", {"server.address": "grpc.io", "server.port": 50051}),
    ("unix:///run/containerd/containerd.sock", {"server.address": "/run/containerd/containerd.sock"}),
    ("zk://zookeeper:2181/my-server", {"server.address": "zk://zookeeper:2181/my-server"}),
    ("ipv4:198.51.100.123:50051,198.51.100.124:50051",
     {"server.address": "ipv4:198.51.100.123:50051,198.51.100.124:50051"}),
    # and what the mesh dials
    ("127.0.0.1:7101", {"server.address": "127.0.0.1", "server.port": 7101}),
    ("summarizer.agents.svc:7102", {"server.address": "summarizer.agents.svc", "server.port": 7102}),
    ("ipv4:10.0.0.5:7101", {"server.address": "10.0.0.5", "server.port": 7101}),
    ("dns:///localhost:7101", {"server.address": "localhost", "server.port": 7101}),
    ("[::1]:7101", {"server.address": "::1", "server.port": 7101}),
    ("grpc.io", {"server.address": "grpc.io"}),
    ("unix:relative.sock", {"server.address": "relative.sock"}),
    ("host:notaport", {"server.address": "host:notaport"}),
])
def test_server_address_of_a_target(target: str, expected: dict[str, Any]) -> None:
    assert server_address(target) == expected


@pytest.mark.parametrize(("peer", "expected"), [
    ("ipv4:10.1.2.80:65123", {"network.peer.address": "10.1.2.80", "network.peer.port": 65123}),
    ("ipv6:[::1]:65123", {"network.peer.address": "::1", "network.peer.port": 65123}),
    ("ipv6:[2001:db8::7]:443", {"network.peer.address": "2001:db8::7", "network.peer.port": 443}),
    ("unix:/tmp/my.sock", {"network.peer.address": "/tmp/my.sock"}),
    ("ipv4:10.1.2.80:99999", {}),
    ("ipv6:[::1", {}),
    ("unix:", {}),
    ("", {}),
    ("something else", {}),
])
def test_peer_attributes_of_what_grpc_says(peer: str, expected: dict[str, Any]) -> None:
    assert peer_attributes(peer) == expected


@pytest.mark.parametrize(("value", "safe"), [
    ("semconv-req-1", True), ("4bf92f35-77b3.4da6:a3ce@929d/0e0e+4736=", True), ("x" * 128, True),
    ("x" * 129, False), ("", False), ("bad id", False), ("line\nbreak", False), ("caf\u00e9", False),
    (None, False), (b"bytes", False), (42, False),
])
def test_a_request_id_is_bounded_in_length_and_charset(value: object, safe: bool) -> None:
    assert safe_request_id(value) == (value if safe else None)
