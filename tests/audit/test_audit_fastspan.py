"""The sink's own tracer: OpenTelemetry API compatibility, parent/child links, one end per span,
exceptions recorded without their message, and the fast JSONL line equal to span_record's JSON."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from agentmesh.audit import FastSpan, FastTracer, extract, inject, jsonline, span_record
from agentmesh.audit.jsonline import encode_json, span_line
from agentmesh.audit.otlp import readable_span

REMOTE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlc2lnbmF0dXJl"
SECRET = "opaque-s3cr3t"


def _tracer(ended: list[FastSpan] | None = None, service: str = "ingestor") -> FastTracer:
    resource = Resource.create({"service.name": service})
    return FastTracer(service, resource, ended.append if ended is not None else None)


def test_a_client_span_started_under_use_span_is_a_child_of_the_server_span():
    tracer = _tracer()
    server = tracer.start_span("/svc/Call", context=extract([("traceparent", REMOTE)]), kind=SpanKind.SERVER)
    assert isinstance(server, trace.Span)
    assert server.parent is not None and server.parent.is_remote
    assert f"{server.trace_id:032x}" == REMOTE.split("-")[1]
    assert f"{server.parent.span_id:016x}" == REMOTE.split("-")[2]
    with trace.use_span(server, end_on_exit=False):
        assert trace.get_current_span() is server
        client = tracer.start_span("/svc/Next", kind=SpanKind.CLIENT)
    assert trace.get_current_span() is not server
    assert client.parent == server.get_span_context()
    assert client.trace_id == server.trace_id and client.span_id != server.span_id
    md: list[tuple[str, str]] = []
    inject(md, trace.set_span_in_context(client))
    assert md == [("traceparent", f"00-{client.trace_id:032x}-{client.span_id:016x}-01")]
    assert span_record(_ended(client))["parent_span_id"] == f"{server.span_id:016x}"


def test_without_a_valid_parent_a_span_starts_a_new_trace_with_non_zero_ids():
    tracer = _tracer()
    spans = [tracer.start_span("x", context=extract([])) for _ in range(200)]
    assert all(s.parent is None and s.trace_id and s.span_id for s in spans)
    assert len({s.trace_id for s in spans}) == 200 and len({s.span_id for s in spans}) == 200
    ctx = spans[0].get_span_context()
    assert ctx is spans[0].get_span_context()  # built once
    assert ctx.is_valid and not ctx.is_remote and ctx.trace_flags.sampled


def test_an_unsampled_remote_parent_is_still_recorded():
    ended: list[FastSpan] = []
    span = _tracer(ended).start_span("x", context=extract([("traceparent", REMOTE[:-2] + "00")]))
    assert span.is_recording() and span.get_span_context().trace_flags.sampled
    span.end()
    assert ended == [span]


def test_end_is_idempotent_and_an_ended_span_ignores_changes():
    ended: list[FastSpan] = []
    span = _tracer(ended).start_span("before", attributes={"a": 1})
    span.end()
    end_time = span.end_time
    span.end()
    span.set_attribute("b", 2)
    span.set_attributes({"c": 3})
    span.add_event("late")
    span.set_status(StatusCode.ERROR)
    span.update_name("after")
    span.record_exception(ValueError("late"))
    assert ended == [span] and span.end_time == end_time and not span.is_recording()
    assert (span.name, span.attributes, span.events, span.status_code) == ("before", {"a": 1}, [], StatusCode.UNSET)


def test_start_attributes_are_copied_not_shared():
    shared = {"rpc.method": "agentmesh.v1.Agent/Invoke"}
    span = _tracer().start_span("x", attributes=shared)
    span.set_attribute("extra", True)
    assert shared == {"rpc.method": "agentmesh.v1.Agent/Invoke"}


def test_status_follows_the_opentelemetry_rules():
    tracer = _tracer()
    span = tracer.start_span("x")
    span.set_status(StatusCode.UNSET)
    assert span.status_code is StatusCode.UNSET
    span.set_status(Status(StatusCode.ERROR, "UNAVAILABLE"))
    assert (span.status_code, span.status_description) == (StatusCode.ERROR, "UNAVAILABLE")
    span.set_status(StatusCode.OK, "ignored for OK")
    assert (span.status_code, span.status_description) == (StatusCode.OK, None)
    span.set_status(StatusCode.ERROR)  # nothing overrides OK
    assert span.status_code is StatusCode.OK


def test_exceptions_are_recorded_by_type_never_by_message(tmp_path):
    ended: list[FastSpan] = []
    tracer = _tracer(ended)
    with pytest.raises(KeyError):
        with tracer.start_as_current_span("managed"):
            raise KeyError(f"{SECRET} {JWT}")
    span = tracer.start_span("use_span")  # how the server chain uses spans
    with pytest.raises(ValueError):
        with trace.use_span(span, end_on_exit=True):
            raise ValueError(f"{SECRET} {JWT}")
    with pytest.raises(RuntimeError):
        with tracer.start_span("with-span"):
            raise RuntimeError(SECRET)
    assert [s.name for s in ended] == ["managed", "use_span", "with-span"]
    for s, kind in zip(ended, ("KeyError", "ValueError", "RuntimeError"), strict=True):
        assert s.events == [("exception", {"exception.type": kind}, s.events[0][2])]
        assert (s.status_code, s.status_description) == (StatusCode.ERROR, kind)
        assert SECRET not in span_line(s) and SECRET not in repr(readable_span(s).to_json())


def test_start_as_current_span_can_leave_the_span_open_and_the_exception_unrecorded():
    ended: list[FastSpan] = []
    tracer = _tracer(ended)
    with pytest.raises(ValueError):
        with tracer.start_as_current_span("x", record_exception=False, set_status_on_exception=False,
                                          end_on_exit=False) as span:
            raise ValueError("boom")
    assert ended == [] and span.events == [] and span.status_code is StatusCode.UNSET


def _ended(span: FastSpan) -> FastSpan:
    span.end()
    return span


def _varied_spans() -> list[FastSpan]:
    tracer = _tracer(service='quo"ted\u00e9')
    root = tracer.start_span("root \u2603 \"q\"", kind=SpanKind.SERVER, attributes={
        "rpc.system.name": "grpc", "n": 7, "neg": -3, "big": 2**70, "ok": True, "no": False, "ratio": 0.25,
        "roles": ["admin", "client"], "chain": ("spiffe://td/agent/a", JWT), "empty": [],
        "note": f"forwarded {JWT}", "authorization": "Bearer abc", "api_key": SECRET, "token": 3,
        "nested": {"password": "x", "inner": [1, "Bearer y", {"k": JWT}]}, "raw": b"\x00bin",
        "none": None, "mixed": [1, "a", 2.5, None], "unicode": "caf\u00e9 \U0001f600 \x07", 5: "int key",
    })
    root.add_event("agentmesh.denied", {"stage": "token", "reason": f"bad {JWT}"})
    root.add_event("empty")
    root.set_status(Status(StatusCode.ERROR, "PERMISSION_DENIED"))
    with trace.use_span(root):
        child = tracer.start_span("child", kind=SpanKind.CLIENT)
    internal = tracer.start_span("internal", kind=SpanKind.INTERNAL, start_time=1_700_000_000_123_456_789)
    return [_ended(child), _ended(root), internal]  # "internal" never ended: end falls back to start


def test_the_fast_jsonl_line_is_exactly_the_json_of_span_record():
    for _ in range(2):  # the second round reads the memoised attribute fragments
        for span in _varied_spans():
            assert span_line(span) == encode_json(span_record(span)) + "\n"


def test_the_memo_of_attribute_fragments_never_holds_a_secret():
    for span in _varied_spans():
        span_line(span)
    memo = repr(jsonline._PAIRS) + repr(jsonline._INT_PAIRS) + repr(jsonline._LIST_PAIRS) + repr(jsonline._KEYS)
    assert "rpc.system.name" in memo and "'n', 7" in memo and "('admin', 'client')" in memo
    assert JWT.split(".")[0] not in memo and SECRET not in memo and "Bearer" not in memo


def test_otlp_gets_sdk_spans_with_resource_parent_kind_status_events_and_links():
    tracer = _tracer()
    parent = tracer.start_span("parent")
    with trace.use_span(parent):
        span = tracer.start_span("call", kind=SpanKind.CLIENT, attributes={"token": "t", "a": 1},
                                 links=[Link(parent.get_span_context(), {"why": "batch"})])
    span.add_event("e", {"reason": JWT}, timestamp=123)
    span.set_status(StatusCode.ERROR, f"{JWT}")
    sdk = readable_span(_ended(span))
    assert sdk.context == span.get_span_context() and sdk.parent == parent.get_span_context()
    assert sdk.resource.attributes["service.name"] == "ingestor"
    assert sdk.kind is SpanKind.CLIENT and sdk.name == "call"
    assert (sdk.start_time, sdk.end_time) == (span.start_time, span.end_time)
    assert dict(sdk.attributes or {}) == {"token": "[REDACTED]", "a": 1}
    assert sdk.events[0].name == "e" and sdk.events[0].timestamp == 123
    assert dict(sdk.events[0].attributes or {}) == {"reason": "[REDACTED]"}
    assert sdk.status.status_code is StatusCode.ERROR and sdk.status.description == "[REDACTED]"
    assert [link.context for link in sdk.links] == [parent.get_span_context()]
