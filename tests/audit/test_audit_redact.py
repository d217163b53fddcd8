"""No secret reaches an audit record: masking rules, payload allow-lists, and the bytes on disk."""

from __future__ import annotations

from google.protobuf import struct_pb2

from agentmesh.audit import REDACTED, build_audit, payload_attributes, redact_text, safe_attributes
from agentmesh.audit.exporters import RedactingExporter
from agentmesh.config import AuditConfig
from agentmesh.v1 import agent_pb2

JWT = (
    "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiJhbGljZSIsImF1ZCI6ImFnZW50bWVzaCJ9"
    ".MEUCIQDsecretsignatureAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
)
PEM_BODY = "MC4CAQAwBQYDK2VwBCIEIPrivateKeyBytesThatMustNeverLeak0123456789"
PEM = f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----\n"
BEARER = "Bearer x"
SECRETS = (JWT, JWT.split(".")[2], JWT.split(".")[1], PEM_BODY, "BEGIN PRIVATE KEY", BEARER, "opaque-s3cr3t")


def test_credential_looking_keys_are_masked_whatever_their_value():
    masked = safe_attributes({
        "authorization": "x",
        "http.request.header.authorization": "x",
        "agentmesh.token": "x",
        "client_secret": "x",
        "password": "x",
        "db.passwd": "x",
        "cookie": "x",
        "x-api-key": "x",
        "private_key": "x",
        "key": "x",
        "session.key": "x",
    })
    assert set(masked.values()) == {REDACTED}
    kept = {"agentmesh.rule": "r", "keyboard": "qwerty", "monkey": "banana", "enduser.id": "alice"}
    assert safe_attributes(kept) == kept


def test_secret_looking_values_are_masked_and_the_rest_of_the_text_kept():
    assert redact_text(f"token {JWT} expired") == f"token {REDACTED} expired"
    assert redact_text(f"key:\n{PEM}done") == f"key:\n{REDACTED}\ndone"
    assert redact_text(f"-----BEGIN EC PRIVATE KEY-----\n{PEM_BODY}") == REDACTED  # cut-off PEM
    assert redact_text("authorization: Bearer abc.def") == f"authorization: {REDACTED}"
    assert redact_text("no secrets here, keep me") == "no secrets here, keep me"
    out = safe_attributes({"chain": ["spiffe://td/agent/a", JWT], "n": 3, "ok": True, "nested": {"token": "x"}})
    assert out == {"chain": ["spiffe://td/agent/a", REDACTED], "n": 3, "ok": True, "nested": {"token": REDACTED}}
    assert safe_attributes({"raw": b"\x00secret"}) == {"raw": REDACTED}


def test_secrets_in_attributes_and_events_never_reach_the_file(tmp_path):
    path = tmp_path / "audit.jsonl"
    sink = build_audit(AuditConfig(exporters=("jsonl",), jsonl_path=path), service_name="ingestor")
    try:
        with sink.tracer.start_as_current_span("call") as span:
            span.set_attributes({
                "authorization": BEARER,
                "note": f"forwarded {JWT}",
                "pem": PEM,
                "list": [BEARER, "fine"],
                "api_key": "opaque-s3cr3t",
            })
            span.add_event("agentmesh.denied", {"stage": "token", "reason": f"bad token {JWT}"})
            span.add_event("debug", {"header": BEARER, "cert": PEM, "password": "opaque-s3cr3t"})
        assert sink.force_flush(5)
    finally:
        sink.shutdown(5)
    data = path.read_bytes()
    for secret in SECRETS:
        assert secret.encode() not in data, secret
    assert data.count(REDACTED.encode()) == 9
    assert b'"reason":"bad token [REDACTED]"' in data


def test_otlp_spans_are_redacted_before_they_leave(make_sink, recording):
    sink = make_sink("ingestor", [RedactingExporter(recording)])
    with sink.tracer.start_as_current_span("call") as span:
        span.set_attributes({"authorization": BEARER, "enduser.id": "alice"})
        span.add_event("e", {"reason": JWT})
    assert sink.force_flush(5)
    (sent,) = recording.spans
    assert dict(sent.attributes or {}) == {"authorization": REDACTED, "enduser.id": "alice"}
    assert dict(sent.events[0].attributes or {}) == {"reason": REDACTED}
    assert sent.context == span.get_span_context() and sent.name == "call"


def _task() -> agent_pb2.Task:
    data = struct_pb2.Struct()
    data.update({"q": "weather", "n": 2})
    return agent_pb2.Task(
        id="task-1",
        input=[agent_pb2.Part(text=f"use {JWT} please"), agent_pb2.Part(data=data), agent_pb2.Part(text="x" * 1000)],
        metadata={"lang": "en", "api_key": "opaque-s3cr3t", "auth": BEARER},
        skill="",
    )


def test_only_allow_listed_payload_fields_are_recorded_redacted_and_truncated():
    fields = [
        "id",
        "metadata.lang",
        "metadata.api_key",  # allow-listed by mistake: its name still masks it
        "metadata.auth",
        "input.0.text",
        "input.1.data",
        "input.2.text",
        "parent_task_id",  # unset optional: left out
        "metadata.missing",
        "input.9.text",
        "no.such.field",
    ]
    attrs = payload_attributes(_task(), fields)
    assert attrs == {
        "agentmesh.payload.id": "task-1",
        "agentmesh.payload.metadata.lang": "en",
        "agentmesh.payload.metadata.api_key": REDACTED,
        "agentmesh.payload.metadata.auth": REDACTED,
        "agentmesh.payload.input.0.text": f"use {REDACTED} please",
        "agentmesh.payload.input.1.data": '{"n":2.0,"q":"weather"}',
        "agentmesh.payload.input.2.text": "x" * 255 + "…",
    }
    assert payload_attributes(_task(), []) == {}


def test_a_repeated_field_without_index_records_each_element_redacted():
    attrs = payload_attributes(_task(), ["input"])
    (values,) = attrs.values()
    assert isinstance(values, list) and len(values) == 3
    assert all(JWT not in str(v) for v in values)
    assert values[0] == '{"text":"use [REDACTED] please"}'


def test_the_sink_records_payload_fields_from_its_config(make_sink):
    assert make_sink("a", payload_fields=("id",)).payload_attributes(_task()) == {"agentmesh.payload.id": "task-1"}
    assert make_sink("b").payload_attributes(_task()) == {}
