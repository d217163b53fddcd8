"""One ended span as one JSONL line, written fast: the export thread holds the GIL while it works.

:func:`span_line` returns exactly the compact JSON of
:func:`agentmesh.audit.exporters.span_record` (same keys, order, redaction and number format;
``tests/audit/test_audit_fastspan.py`` holds it to that), without building the record first: the
line is assembled from JSON fragments, and the fragment of an attribute that repeats from span to
span (a name with a string, an integer or a list of strings: method, agent, peer, roles, chain,
status code, rule...) is computed once. Only short values that needed no masking are memoised, so the
memo never holds a secret; it is cleared when it fills up.
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
_MAX_MEMO_CHARS = 512  # longer fragments are not kept: the memo stays under a few MB
#: compact JSON, as the JSONL schema is written; one encoder for all (json.dumps builds one per call)
encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode
_REDACTED_JSON = encode_basestring(REDACTED)
_KEYS: dict[str, str] = {}  # attribute name -> '"name":', or "" when the name is sensitive
#: (name, value) -> '"name":<value JSON>' for values with no secret, one memo per value type so that a
#: lookup never meets an equal value of another type (1 == True == 1.0): exact str values, exact int
#: values (never bool), and lists or tuples of exact str (keyed by the tuple of their items)
_PAIRS: dict[tuple[str, str], str] = {}
_INT_PAIRS: dict[tuple[str, int], str] = {}
_LIST_PAIRS: dict[tuple[str, tuple[str, ...]], str] = {}


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


def _pair(key: Any, value: Any) -> str:
    """The JSON of one attribute (``"key":value``, redacted); kept in its memo when that is safe."""
    if type(key) is not str:
        key = str(key)
    prefix = _key_json(key)
    if not prefix:
        return encode_basestring(key) + ":" + _REDACTED_JSON
    kind = type(value)
    memo: dict[Any, str]
    if kind is str:
        safe = redact_text(value)
        pair, memo, memo_key = prefix + encode_basestring(safe), _PAIRS, (key, value) if safe == value else None
    elif kind is int:
        pair, memo, memo_key = prefix + int.__repr__(value), _INT_PAIRS, (key, value)
    elif (kind is list or kind is tuple) and all(type(v) is str for v in value):
        safe_items = [redact_text(v) for v in value]
        pair = prefix + "[" + ",".join([encode_basestring(v) for v in safe_items]) + "]"
        memo, memo_key = _LIST_PAIRS, (key, tuple(value)) if safe_items == list(value) else None
    else:
        return prefix + _value_json(value)
    if memo_key is not None and len(pair) <= _MAX_MEMO_CHARS:  # nothing masked: safe to keep
        if len(memo) >= _MAX_MEMO:
            memo.clear()
        memo[memo_key] = pair
    return pair


def _attributes_json(attributes: Mapping[str, Any]) -> str:
    """The JSON of ``safe_attributes(attributes)``."""
    if not attributes:
        return "{}"
    strs, ints, lists = _PAIRS.get, _INT_PAIRS.get, _LIST_PAIRS.get
    parts = []
    for item in attributes.items():  # (name, value): the memo key of str and int values as it is
        kind = type(item[1])
        if kind is str:
            pair = strs(item)
        elif kind is int:
            pair = ints(item)
        elif kind is list or kind is tuple:
            try:
                pair = lists((item[0], tuple(item[1])))
            except TypeError:  # an unhashable element (a dict...): never memoised
                pair = None
        else:
            pair = None
        parts.append(pair if pair is not None else _pair(*item))
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
