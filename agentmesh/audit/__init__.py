"""Audit spans and call metrics for every mesh call (OpenTelemetry API, never the global providers).

::

    attributes.py   every attribute and event name, in one place
    redact.py       safe_attributes / payload_attributes: no secret reaches a span
    propagation.py  W3C traceparent in gRPC metadata (inject / extract)
    fastspan.py     FastTracer / FastSpan: the OpenTelemetry tracing API over plain records
    spans.py        helpers that record denials and guard hits on a span
    processor.py    hands each ended span to every exporter's queue (never blocks the call)
    exportqueue.py  one bounded queue + worker thread per exporter, exporting in slices
    failurelog.py   when an exporter's failures are logged: once, then a summary per interval
    exporters.py    console, JSONL (schema in its docstring)
    jsonlfile.py    the JSONL file: whole-line appends, rotation by size and age across processes
    otlp.py         OTLP: SDK spans built and redacted in the export thread
    metrics.py      per-edge call counters and latency histograms (plain arithmetic per call)
    prom.py         the Prometheus endpoint of a member (its own registry)
    promview.py     reading members' endpoints back (agentmesh top / graph)
    otlpmetrics.py  the same metrics pushed over OTLP (metrics.otlp_endpoint)
    sink.py         AuditSink / build_audit: all of the above for one agent
    tree.py         reading a JSONL audit log back as trace trees (``agentmesh audit show``)
"""

from agentmesh.audit.exporters import ConsoleExporter, JsonlExporter, make_exporters, span_record
from agentmesh.audit.fastspan import FastSpan, FastTracer
from agentmesh.audit.metrics import AuditMetrics
from agentmesh.audit.processor import QueueSpanProcessor
from agentmesh.audit.propagation import extract, inject, remote_parent
from agentmesh.audit.redact import REDACTED, payload_attributes, redact_text, safe_attributes
from agentmesh.audit.sink import AuditSink, build_audit
from agentmesh.audit.spans import record_denial, record_guard, rpc_attributes, set_safe_attributes

__all__ = [
    "REDACTED",
    "AuditMetrics",
    "AuditSink",
    "ConsoleExporter",
    "FastSpan",
    "FastTracer",
    "JsonlExporter",
    "QueueSpanProcessor",
    "build_audit",
    "extract",
    "inject",
    "make_exporters",
    "payload_attributes",
    "record_denial",
    "record_guard",
    "redact_text",
    "remote_parent",
    "rpc_attributes",
    "safe_attributes",
    "set_safe_attributes",
    "span_record",
]
