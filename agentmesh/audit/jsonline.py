"""One ended span as one JSONL line, written fast: the export thread holds the GIL while it works.

:func:`span_line` returns exactly the compact JSON of
:func:`agentmesh.audit.exporters.span_record` (same keys, order, redaction and number format;
``tests/audit/test_audit_fastspan.py`` holds it to that), without building the record first: the
line is assembled from JSON fragments, and the fragment of a (name, string value) attribute that
repeats from span to span (method, agent, peer, rule...) is computed once. Only values that needed
no masking are memoised, so the memo never holds a secret; it is cleared when it fills up.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from json.encoder import encode_basestring
from typing import Any

from opentelemetry.trace import SpanKind, StatusCode

from agentmesh.audit.fastspan import FastSpan
from agentmesh.audit.redact import REDACTED, redact_text, safe_value, sensitive_key

__all__ = ["KINDS", "encode_json", "span_line"]

KINDS = {SpanKind.SERVER: "server", SpanKind.CLIENT: "client"}
_ERROR = StatusCode.ERROR
_MAX_MEMO = 4096
#: compact JSON, as the JSONL schema is written; one encoder for all (json.dumps builds one per call)
encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode
_REDACTED_JSON = encode_basestring(REDACTED)
_KEYS: dict[str, str] = {}  # attribute name -> '"name":', or "" when the name is sensitive
_PAIRS: dict[tuple[str, str], str] = {}  # (name, str value) -> '"name":"value"', values with no secret


def _key_json(key: str) -> str:
    out = _KEYS.get(key)
    if out is None:
        out = "" if sensitive_key(key) else encode_basestring(key) + ":"
        if len(_KEYS) < _MAX_MEMO:
            _KEYS[key] = out
    return out


def _value_json(value: object) -> str:
    """The JSON of ``safe_value(value)``."""
    kind = type(value)
    if kind is str:
        return encode_basestring(redact_text(value))  # type: ignore[arg-type]
    if kind is int:
        return int.__repr__(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is list or kind is tuple:
        return "[" + ",".join([_value_json(v) for v in value]) + "]"  # type: ignore[attr-defined]
    return encode_json(safe_value(value))


def _str_pair(key: str, value: str) -> str:
    prefix = _key_json(key)
    if not prefix:
        return encode_basestring(key) + ":" + _REDACTED_JSON
    safe = redact_text(value)
    pair = prefix + encode_basestring(safe)
    if safe == value:  # nothing masked: safe to keep
        if len(_PAIRS) >= _MAX_MEMO:
            _PAIRS.clear()
        _PAIRS[(key, value)] = pair
    return pair


def _attributes_json(attributes: Mapping[str, Any]) -> str:
    """The JSON of ``safe_attributes(attributes)``."""
    if not attributes:
        return "{}"
    parts = []
    for key, value in attributes.items():
        if type(key) is not str:
            key = str(key)
        if type(value) is str:
            pair = _PAIRS.get((key, value))
            parts.append(pair if pair is not None else _str_pair(key, value))
            continue
        prefix = _key_json(key)
        parts.append(prefix + _value_json(value) if prefix else encode_basestring(key) + ":" + _REDACTED_JSON)
    return "{" + ",".join(parts) + "}"


def span_line(span: FastSpan) -> str:
    """The JSONL line (newline included) of one ended span: ``encode_json(span_record(span))``."""
    parent = span.parent
    start = span.start_time / 1e9
    end = (span.end_time or span.start_time) / 1e9
    parent_id = f'"{parent.span_id:016x}"' if parent is not None else "null"
    events = ",".join([
        f'{{"name":{encode_basestring(name)},"time":{ts / 1e9!r},"attributes":{_attributes_json(attrs)}}}'
        for name, attrs, ts in span.events
    ])
    return (
        f'{{"trace_id":"{span.trace_id:032x}","span_id":"{span.span_id:016x}",'
        f'"parent_span_id":{parent_id},'
        f'"name":{encode_basestring(span.name)},"kind":"{KINDS.get(span.kind, "internal")}",'
        f'"start":{start!r},"end":{end!r},"duration_ms":{round((end - start) * 1000, 3)!r},'
        f'"service":{encode_basestring(span.tracer.service_name)},'
        f'"status":"{"ERROR" if span.status_code is _ERROR else "OK"}",'
        f'"attributes":{_attributes_json(span.attributes)},"events":[{events}]}}\n'
    )
