"""W3C trace context through gRPC metadata: round trip, replacement, and bad input as a fresh root."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.context import Context

from agentmesh.audit import extract, inject

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_round_trip_makes_the_server_span_a_child_of_the_client_span(make_sink, recording):
    sink = make_sink("bridge", [recording])
    with sink.tracer.start_as_current_span("client") as client:
        md = [("x-request-id", "1")]
        inject(md)
    keys = [k for k, _ in md]
    assert keys == ["x-request-id", "traceparent"]
    ctx = extract(md)
    remote = trace.get_current_span(ctx).get_span_context()
    assert remote.is_remote and remote.trace_id == client.get_span_context().trace_id
    assert remote.span_id == client.get_span_context().span_id
    with sink.tracer.start_as_current_span("server", context=ctx) as server:
        pass
    assert server.parent is not None and server.parent.span_id == client.get_span_context().span_id


def test_an_explicit_context_and_tracestate_are_carried_and_old_headers_replaced():
    ctx = extract([("traceparent", PARENT), ("tracestate", "vendor=abc")])
    md = [("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01"), ("authorization", "Bearer t")]
    inject(md, ctx)
    assert dict(md) == {"authorization": "Bearer t", "traceparent": PARENT, "tracestate": "vendor=abc"}
    assert len(md) == 3


def test_nothing_is_injected_without_a_valid_span():
    md: list[tuple[str, str]] = [("traceparent", PARENT)]
    inject(md, Context())
    assert md == [("traceparent", PARENT)]


def _is_root(ctx: Context) -> bool:
    return not trace.get_current_span(ctx).get_span_context().is_valid


def test_missing_invalid_repeated_or_binary_traceparents_give_a_fresh_root(make_sink, recording):
    cases = [
        [],
        None,
        [("traceparent", "garbage")],
        [("traceparent", "00-" + "0" * 32 + "-00f067aa0ba902b7-01")],  # all-zero trace id
        [("traceparent", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],  # forbidden version
        [("traceparent", PARENT), ("traceparent", PARENT.replace("4bf9", "aaaa"))],
        [("traceparent", PARENT.encode())],
    ]
    for md in cases:
        assert _is_root(extract(md)), md
    sink = make_sink("ingestor", [recording])
    with sink.tracer.start_as_current_span("outer"):  # an ambient span is NOT inherited
        ctx = extract([("traceparent", "garbage")])
        with sink.tracer.start_as_current_span("server", context=ctx) as server:
            pass
    assert server.parent is None


def test_header_names_are_matched_case_insensitively():
    ctx = extract([("TraceParent", PARENT)])
    assert format(trace.get_current_span(ctx).get_span_context().trace_id, "032x") == PARENT.split("-")[1]


def test_a_spans_own_header_is_what_the_w3c_propagator_writes(make_sink, recording):
    # inject_span (the client chain's and the bridge's path: no context built, an agentmesh span's ids
    # formatted directly) against OpenTelemetry's own W3C propagator, the reference: an agentmesh span, a
    # foreign unsampled one with trace state, an invalid one; old headers replaced, whatever their case
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from agentmesh.audit.propagation import inject_span

    sink = make_sink("bridge", [recording])
    ours = sink.tracer.start_span("client", kind=trace.SpanKind.CLIENT)
    foreign = NonRecordingSpan(SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xF067AA0BA902B7, is_remote=False,
                                           trace_flags=TraceFlags(0), trace_state=TraceState([("v", "1")])))
    for span in (ours, foreign, trace.INVALID_SPAN):
        reference: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(reference, context=trace.set_span_in_context(span))
        md = [("Traceparent", PARENT), ("x-request-id", "1"), ("TRACESTATE", "old=1")]
        inject_span(md, span)
        if reference:
            assert md == [("x-request-id", "1"), *reference.items()]
        else:  # an invalid span: nothing replaced, nothing added
            assert md == [("Traceparent", PARENT), ("x-request-id", "1"), ("TRACESTATE", "old=1")]
    assert dict(md) != {}
    literal: list[tuple[str, str]] = []
    inject_span(literal, foreign)
    assert literal == [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
                       ("tracestate", "v=1")]
    ours.end()
