"""The pure parts of the bridge: path templates, edge decisions, depth checks, error mapping, options."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from agentmesh.bridge.checks import check_depth
from agentmesh.bridge.edge import authenticate, forwarded_metadata, parse_timeout, path_segments, request_id
from agentmesh.bridge.errors import HttpError, from_rpc_error
from agentmesh.bridge.streaming import NDJSON, SSE, stream_format
from agentmesh.bridge.template import PathTemplate
from agentmesh.errors import ConfigError


@pytest.mark.parametrize(("template", "path", "expected"), [
    ("/v1/things/{id}", "v1/things/42", {"id": "42"}),
    ("/v1/things/{id}", "v1/things/42/x", None),
    ("/v1/things/{id}", "v1/things", None),
    ("/v1/things/{id}", "v1/things/", None),
    ("/v1/{name=shelves/*/books/*}", "v1/shelves/s1/books/b2", {"name": "shelves/s1/books/b2"}),
    ("/v1/{name=shelves/*/books/*}", "v1/shelves/s1/cds/b2", None),
    ("/v1/{book.id}:cancel", "v1/7:cancel", {"book.id": "7"}),
    ("/v1/{book.id}:cancel", "v1/7", None),
    ("/v1/files/{path=**}", "v1/files/a/b/c", {"path": "a/b/c"}),
    ("/v1/files/{path=**}", "v1/files", None),
    ("/v1/*/x", "v1/anything/x", {}),
])
def test_path_templates(template: str, path: str, expected: dict[str, str] | None) -> None:
    assert PathTemplate.parse(template).match(path.split("/")) == expected


@pytest.mark.parametrize("template", ["v1/x", "/v1/**/x", "/v1/{id", "/v1/{id}}", "/v1//x", "/v1/{1bad}",
                                      "/v1/{a}/{a}", "/v1/../x", "/v1/a b"])
def test_invalid_templates_are_config_errors(template: str) -> None:
    with pytest.raises(ConfigError):
        PathTemplate.parse(template)


def test_openapi_path_of_a_template() -> None:
    assert PathTemplate.parse("/v1/{name=shelves/*}/books:list").openapi_path() == "/v1/{name}/books:list"


@pytest.mark.parametrize(("raw", "segments"), [
    (b"/v1/agents/a/b.C/D", ["v1", "agents", "a", "b.C", "D"]),
    (b"/v1/x/caf%C3%A9%20y", ["v1", "x", "café y"]),
    (b"/v1/x/%252F", ["v1", "x", "%2F"]),
])
def test_path_segments(raw: bytes, segments: list[str]) -> None:
    assert path_segments(raw) == segments


@pytest.mark.parametrize("raw", [b"/a%2fb", b"/a%2Fb", b"/%2e%2e/x", b"/a/%2E", b"/a%5cb", b"/a\\b", b"/a/../b",
                                 b"/a/./b", b"/a/%00", b"/a/%ff", b"a/b"])
def test_path_segments_refuses_separators_and_dots(raw: bytes) -> None:
    with pytest.raises(HttpError) as err:
        path_segments(raw)
    assert err.value.status == 400


@pytest.mark.parametrize(("grpc_timeout", "request_timeout", "expected"), [
    (None, None, 30.0), ("500m", None, 0.5), ("2S", None, 2.0), ("1M", None, 60.0), ("1H", None, 60.0),
    ("100u", None, 1e-4), ("7n", None, 7e-9), (None, "2.5", 2.5), ("3S", "1", 1.0), (None, "1e9", 60.0),
])
def test_parse_timeout(grpc_timeout: str | None, request_timeout: str | None, expected: float) -> None:
    got = parse_timeout(grpc_timeout, request_timeout, default=30.0, maximum=60.0)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(("grpc_timeout", "request_timeout"), [
    ("5", None), ("5s", None), ("123456789S", None), ("-1S", None), ("0S", None), (" ", None),
    (None, "x"), (None, "inf"), (None, "nan"), (None, "-1"), (None, "0"),
])
def test_invalid_timeouts(grpc_timeout: str | None, request_timeout: str | None) -> None:
    with pytest.raises(HttpError) as err:
        parse_timeout(grpc_timeout, request_timeout, default=30.0, maximum=60.0)
    assert err.value.status == 400


def test_forwarded_metadata_is_an_allow_list() -> None:
    headers = [("Authorization", "Bearer x"), ("txn-token", "t"), ("txn-links", "l"),
               ("x-agentmesh-subject-token", "t"), ("grpc-metadata-a", "b"),
               ("x-forwarded-client-cert", "c"), ("x-request-id", "client-id"), ("traceparent", "t")]
    assert forwarded_metadata(headers, "rid") == [("x-request-id", "rid")]
    assert request_id("ok-1") == "ok-1" and request_id("no spaces") != "no spaces" and len(request_id(None)) == 32


def test_authenticate_without_a_token() -> None:
    for value in (None, "", "Basic abc", "Bearer", "bearer  "):
        with pytest.raises(HttpError) as err:
            authenticate(value, verifier=None)  # type: ignore[arg-type]
        assert err.value.status == 401 and err.value.headers["WWW-Authenticate"] == 'Bearer realm="agentmesh"'


def test_depth_check_counts_only_structure() -> None:
    check_depth(b"[" * 64 + b"]" * 64)
    check_depth(b'{"a": "' + b"[" * 10_000 + b'"}')
    check_depth(b'["\\"[[[[", ' + b"[" * 60 + b"]" * 60 + b"]")
    for body in (b"[" * 65, b'{"a":' * 65, b'["\\"", ' + b"[" * 70):
        with pytest.raises(HttpError):
            check_depth(body)


def test_stream_format_negotiation() -> None:
    assert stream_format(None) is NDJSON and stream_format("application/json") is NDJSON
    assert stream_format("text/html, text/event-stream;q=0.9") is SSE
    assert SSE.message(b"{}") == b"data: {}\n\n" and NDJSON.message(b"{}") == b"{}\n"
    assert SSE.error({"code": "X"}) == b'event: error\ndata: {"code": "X"}\n\n'
    assert NDJSON.error({"code": "X"}) == b'{"error": {"code": "X"}}\n'


def _rpc_error(code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str], ...] = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


def test_rate_limit_headers_are_sanitised() -> None:
    err = from_rpc_error(_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", (
        ("x-ratelimit-limit", "10"), ("x-ratelimit-remaining", "0\r\nSet-Cookie: x"), ("retry-after", "3"),
        ("x-ratelimit-reset", "9"), ("x-other", "1"))), "a", 1.0)
    assert err.status == 429
    assert err.headers == {"RateLimit-Limit": "10", "Retry-After": "3", "RateLimit-Reset": "9"}


def test_transport_and_internal_failures_say_nothing_inside() -> None:
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                 grpc.StatusCode.DEADLINE_EXCEEDED):
        err = from_rpc_error(_rpc_error(code, "failed to connect to ipv4:10.0.0.7:7101 Traceback"), "a", 2.0)
        assert "10.0.0.7" not in err.message and "Traceback" not in err.message


def test_serve_options(tmp_path: Path) -> None:
    from support import TD

    from agentmesh.bridge.server import split_listen, uvicorn_options
    from agentmesh.configfile import parse_config
    from agentmesh.errors import PKIError

    config = parse_config({"trust_domain": TD, "agents": {}}, tmp_path)
    with pytest.raises(PKIError, match=r"cert\.pem"):
        uvicorn_options(config)  # no bridge identity yet: HTTPS cannot start
    opts = uvicorn_options(config, listen="0.0.0.0:9000", insecure_http=True)
    assert (opts["host"], opts["port"], opts["access_log"], opts["log_level"]) == ("0.0.0.0", 9000, False, "info")
    from agentmesh.bridge.protocol import BridgeHttp, BridgeLoop

    assert isinstance(opts["loop"], BridgeLoop) and opts["loop"].uvloop and "ssl_certfile" not in opts
    assert isinstance(opts["http"], BridgeHttp) and opts["http"].parser == "httptools"
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    config = parse_config({"trust_domain": TD, "agents": {}, "bridge": {"tls_cert": "c.pem", "tls_key": "k.pem"}},
                          tmp_path)
    opts = uvicorn_options(config)
    assert opts["ssl_certfile"] == str(tmp_path / "c.pem") and opts["ssl_keyfile"] == str(tmp_path / "k.pem")
    for bad in ("9000", "host:", "h:99999", ":1"):
        with pytest.raises(ConfigError):
            split_listen(bad)
    with pytest.raises(ConfigError, match="workers"):
        uvicorn_options(config, workers=0)
    assert split_listen("[::1]:8443") == ("::1", 8443)


def test_uvicorn_bounds_connections_and_with_h11_request_heads(tmp_path: Path) -> None:
    from agentmesh.bridge.server import uvicorn_options
    from agentmesh.configfile import parse_config

    base = {"trust_domain": "example.org", "agents": {}}
    fast = uvicorn_options(parse_config({**base, "bridge": {"tls": False}}, tmp_path))
    # the connection cap and every phase's deadline live in the protocol (agentmesh.bridge.protocol), not in
    # uvicorn's limit_concurrency (it counted the idle and half-sent connections it never closed)
    assert "limit_concurrency" not in fast and fast["http"].limits.max_connections == 1024
    assert fast["http"].parser in ("httptools", "h11") and fast["h11_max_incomplete_event_size"] == 32 * 1024
    strict = uvicorn_options(parse_config({**base, "bridge": {"tls": False, "http_parser": "h11",
                                                             "max_connections": 64}}, tmp_path))
    assert strict["http"].parser == "h11" and strict["http"].limits.max_connections == 64


def test_duplicate_json_members_are_refused() -> None:
    from agentmesh.bridge.transcode import parse_json

    assert parse_json(b'{"a": 1, "b": {"c": 2}}') == {"a": 1, "b": {"c": 2}}
    for body in (b'{"id": "x", "id": "y"}', b'{"input": [{"text": "a", "text": "b"}]}'):
        with pytest.raises(HttpError, match="twice"):
            parse_json(body)
