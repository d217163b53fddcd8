"""Reading the JSONL audit log back: records, trace trees and one-line summaries (pure, no I/O).

A client span whose only child is a server span is folded into one hop, so a trace reads as
``caller -> callee`` lines::

    trace 4bf92f3577b34da6a3ce929d0e0e4736  (5 spans)
    └─ bridge -> ingestor  agentmesh.v1.Agent/Invoke  allow (client-starts-workflow)  OK  12.3 ms
       └─ ingestor -> summarizer  agentmesh.v1.Agent/Invoke  allow (ingestor-to-summarizer)  OK  8.1 ms

The caller of a server span is its ``agentmesh.peer.spiffe_id`` (shown as the agent name when it
is an agent ID), the callee its ``agentmesh.agent``; for a folded hop the duration is the client's
(what the caller waited). Denials and guard hits follow the status, e.g. ``denied[policy]: ...``.

Both shapes of record are read: those of the OpenTelemetry conventions v1.44 (``rpc.method``
"pkg.Service/Method", ``rpc.response.status_code`` "PERMISSION_DENIED", span names without a leading
"/") and those written before (span names "/pkg.Service/Method", ``rpc.service`` with a short
``rpc.method``, ``rpc.grpc.status_code`` 7); a method is shown as "pkg.Service/Method" either way.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from agentmesh.audit import attributes as A
from agentmesh.cli.text import printable as _printable  # values in the log come partly from callers
from agentmesh.errors import ConfigError

__all__ = ["SpanRecord", "Trace", "build_traces", "method_of", "parse_record", "render_trace", "status_of",
           "summarize"]

_CODE_NAMES: dict[int, str] = {c.value[0]: c.name for c in grpc.StatusCode}
_NAMES = frozenset(_CODE_NAMES.values())


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One line of the audit log (the schema is in agentmesh.audit.exporters)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    start: float
    end: float
    duration_ms: float
    service: str
    status: str
    attributes: Mapping[str, Any]
    events: tuple[Mapping[str, Any], ...]


@dataclass(slots=True)
class Trace:
    trace_id: str
    spans: list[SpanRecord] = field(default_factory=list)

    @property
    def start(self) -> float:
        return min(s.start for s in self.spans)


def parse_record(text: str, where: str) -> SpanRecord:
    """Parses one JSONL line; ``where`` ("audit.jsonl:12") prefixes the ConfigError message."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(f"{where}: not valid JSON") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    for key in ("trace_id", "span_id", "name"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(f"{where}: {key!r} missing or not a string")
    for key in ("start", "end"):
        if isinstance(raw.get(key), bool) or not isinstance(raw.get(key), int | float):
            raise ConfigError(f"{where}: {key!r} missing or not a number")
    attrs = raw.get("attributes") or {}
    events = raw.get("events") or []
    if not isinstance(attrs, dict) or not isinstance(events, list):
        raise ConfigError(f"{where}: 'attributes' must be an object and 'events' a list")
    start, end = float(raw["start"]), float(raw["end"])
    duration = raw.get("duration_ms")
    return SpanRecord(
        trace_id=raw["trace_id"],
        span_id=raw["span_id"],
        parent_span_id=raw.get("parent_span_id") or None,
        name=raw["name"],
        kind=str(raw.get("kind") or "internal"),
        start=start,
        end=end,
        duration_ms=float(duration) if isinstance(duration, int | float) else (end - start) * 1000,
        service=str(raw.get("service") or "?"),
        status=str(raw.get("status") or "OK"),
        attributes=attrs,
        events=tuple(e for e in events if isinstance(e, dict)),
    )


def build_traces(records: Iterable[SpanRecord], trace_prefix: str | None = None) -> list[Trace]:
    """Groups records by trace (optionally only traces whose id starts with ``trace_prefix``)."""
    traces: dict[str, Trace] = {}
    prefix = (trace_prefix or "").lower()
    for r in records:
        if r.trace_id.lower().startswith(prefix):
            traces.setdefault(r.trace_id, Trace(r.trace_id)).spans.append(r)
    return sorted(traces.values(), key=lambda t: t.start)


# ----------------------------------------------------------------------------- rendering


def render_trace(trace: Trace) -> list[str]:
    """The lines of one trace tree: a header, then one line per hop or span."""
    ids = {s.span_id for s in trace.spans}
    children: dict[str | None, list[SpanRecord]] = {}
    for s in trace.spans:
        parent = s.parent_span_id if s.parent_span_id in ids else None  # orphans become roots
        children.setdefault(parent, []).append(s)
    for group in children.values():
        group.sort(key=lambda s: s.start)
    n = len(trace.spans)
    lines = [_printable(f"trace {trace.trace_id}  ({n} span{'s' if n != 1 else ''})")]
    _render(children.get(None, []), children, "", lines)
    return lines


def _render(
    nodes: list[SpanRecord], children: dict[str | None, list[SpanRecord]], prefix: str, out: list[str]
) -> None:
    for i, span in enumerate(nodes):
        last = i == len(nodes) - 1
        kids = children.get(span.span_id, [])
        if span.kind == "client" and len(kids) == 1 and kids[0].kind == "server":
            text, kids = _hop(kids[0], client=span), children.get(kids[0].span_id, [])
        else:
            text = _line(span)
        out.append(f"{prefix}{'└─ ' if last else '├─ '}{text}")
        _render(kids, children, prefix + ("   " if last else "│  "), out)


def _line(span: SpanRecord) -> str:
    if span.kind == "server":
        return _hop(span)
    if span.kind == "client":
        who = f"{span.attributes.get(A.AGENT) or span.service} -> {span.attributes.get(A.TARGET) or '?'}"
        return _join(who, method_of(span), _status(span), _ms(span.duration_ms), _notes(span))
    return _join(span.service, method_of(span), _status(span), _ms(span.duration_ms), _notes(span))


def _hop(server: SpanRecord, client: SpanRecord | None = None) -> str:
    caller = (client.attributes.get(A.AGENT) or client.service) if client else _caller(server)
    callee = server.attributes.get(A.AGENT) or server.service
    duration = client.duration_ms if client else server.duration_ms
    notes = _notes(client) + " " + _notes(server) if client else _notes(server)
    return _join(f"{caller} -> {callee}", method_of(server), _decision(server), _status(server), _ms(duration),
                 notes)


def _caller(server: SpanRecord) -> str:
    peer = server.attributes.get(A.PEER_SPIFFE_ID)
    if not isinstance(peer, str) or not peer:
        user = server.attributes.get(A.ENDUSER_ID)  # an external caller at the bridge: its verified subject
        return user if isinstance(user, str) and user else "?"
    td_path = peer.removeprefix("spiffe://").split("/")
    return td_path[2] if len(td_path) == 3 and td_path[1] == "agent" else peer


def _decision(span: SpanRecord) -> str:
    decision = span.attributes.get(A.DECISION)
    rule = span.attributes.get(A.RULE)
    if not decision:
        return "-"
    return f"{decision} ({rule})" if rule else str(decision)


def method_of(span: SpanRecord) -> str:
    """What an RPC span called, "pkg.Service/Method" (``_OTHER``: a method the server does not serve),
    from either shape of record; any other span's name."""
    attrs = span.attributes
    method = attrs.get(A.RPC_METHOD)
    if isinstance(method, str) and method:
        service = attrs.get(A.LEGACY_RPC_SERVICE)  # written before: "rpc.service" + short "rpc.method"
        return f"{service}/{method}" if isinstance(service, str) and service and "/" not in method else method
    if span.kind in ("server", "client") and span.name.startswith("/"):  # written before: "/pkg.Service/Method"
        return span.name[1:]
    return span.name


def status_of(span: SpanRecord) -> str | None:
    """The gRPC status name of an RPC span ("OK", "PERMISSION_DENIED"), from either shape of record;
    None for a span without one."""
    name = span.attributes.get(A.RPC_RESPONSE_STATUS_CODE)
    if isinstance(name, str) and name in _NAMES:
        return name
    code = span.attributes.get(A.LEGACY_RPC_GRPC_STATUS_CODE)
    if isinstance(code, int) and not isinstance(code, bool) and code in _CODE_NAMES:
        return _CODE_NAMES[code]
    return None


def _status(span: SpanRecord) -> str:
    name = status_of(span)
    if name is not None:
        return name
    http = span.attributes.get(A.HTTP_RESPONSE_STATUS_CODE)  # the bridge's HTTP spans
    if isinstance(http, int) and not isinstance(http, bool):
        return f"HTTP {http}"
    return span.status


def _notes(span: SpanRecord) -> str:
    notes = []
    txn, check = span.attributes.get(A.TXN), span.attributes.get(A.DELEGATION_CHECK)
    if isinstance(txn, str) and txn and span.kind != "client":
        notes.append(f"txn {txn[:12]}")
    for e in span.events:
        attrs = e.get("attributes") or {}
        if e.get("name") == A.EVENT_DENIED:
            stage = attrs.get(A.DENIAL_STAGE, "?")
            stage = f"{stage}:{check}" if isinstance(check, str) and check else stage
            notes.append(f"denied[{stage}]: {attrs.get(A.DENIAL_REASON, '')}")
        elif e.get("name") == A.EVENT_GUARD:
            notes.append(f"guard[{attrs.get(A.GUARD_ACTION, '?')}]: {attrs.get(A.GUARD_PATTERN, '')}")
    return "  ".join(notes)


def _ms(ms: float) -> str:
    return f"{ms:.1f} ms"


def _join(*parts: str) -> str:
    return _printable("  ".join(p.strip() for p in parts if p and p.strip()))


def summarize(span: SpanRecord) -> str:
    """One line for ``agentmesh audit tail``: time, trace, kind, then what the tree line shows."""
    moment = datetime.datetime.fromtimestamp(span.start, datetime.UTC)
    stamp = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return f"{stamp}  {_printable(span.trace_id[:8])}  {_printable(span.kind):<8}  {_line(span)}"
