"""The audit sink of one agent: its own tracer, exporters, queue and metrics.

Nothing here touches OpenTelemetry's global providers, so several agents (each with its own
``service.name``) can live in one process. The tracer is fastspan.py's (the OpenTelemetry tracing
API, without the SDK's per-span cost); every span is recorded: an incoming ``traceparent`` with the
sampled flag off cannot switch auditing off.

Each span that ends passes :meth:`AuditSink._on_end`: a client span is counted in the member's
metrics; a span of a ``quiet`` method (the control plane's housekeeping, unless
``audit.trace_housekeeping``) that ended OK or cancelled by its client is not exported, while one
refused or failed is. The others go to every exporter's own queue (processor.py).

:meth:`AuditSink.available` says whether the *required* exporters (``audit.required``:
:attr:`agentmesh.config.AuditConfig.required_exporters`) can take spans: a dead OTLP collector does not
refuse calls when the JSONL log is the one required.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

from google.protobuf.message import Message
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_NAMESPACE, Resource
from opentelemetry.trace import SpanKind

from agentmesh.audit import attributes as A
from agentmesh.audit.exporters import make_exporters
from agentmesh.audit.fastspan import FastSpan, FastTracer
from agentmesh.audit.metrics import AuditMetrics
from agentmesh.audit.processor import QueueSpanProcessor, SpanRecordExporter
from agentmesh.audit.redact import SafeValue, payload_attributes
from agentmesh.config import AuditConfig

__all__ = ["AuditSink", "build_audit"]

#: the statuses of a quiet method's span that leave no audit record: OK, and CANCELLED (its client
#: ended it: a member renewing onto a new channel, or stopping)
_QUIET_CODES = frozenset({"OK", "CANCELLED"})


class AuditSink:
    """Where one agent's audit spans and call metrics go.

    ``exporters`` may be empty ("none"): spans are still created (for trace propagation) but
    never queued. ``quiet``: methods (``/pkg.Service/Method``) whose spans are exported only when
    refused or failed. ``required``: the names of the exporters :meth:`available` checks (None: all).
    ``processor`` keyword arguments (``slice_budget``, ``clock``, ``log_interval``...) go to the
    :class:`QueueSpanProcessor`.
    """

    def __init__(
        self,
        service_name: str,
        exporters: Sequence[SpanRecordExporter],
        *,
        queue_size: int = 4096,
        payload_fields: Iterable[str] = (),
        namespace: str = "agentmesh",
        max_batch: int = 64,
        schedule_delay: float = 0.05,
        quiet: Collection[str] = (),
        required: Collection[str] | None = None,
        **processor: Any,
    ) -> None:
        self.service_name = service_name
        self.payload_fields = tuple(payload_fields)
        resource = Resource.create({SERVICE_NAME: service_name, SERVICE_NAMESPACE: namespace})
        self._processor: QueueSpanProcessor | None = None
        if exporters:
            self._processor = QueueSpanProcessor(
                exporters,
                queue_size=queue_size,
                max_batch=max_batch,
                schedule_delay=schedule_delay,
                name=f"audit-{service_name}",
                **processor,
            )
            if unknown := set(required or ()) - set(self._processor.queues):
                raise ValueError(f"required exporters {sorted(unknown)} not among {sorted(self._processor.queues)}")
        self.required = None if required is None else tuple(required)
        self._export = self._processor.on_end if self._processor is not None else None
        self._quiet = frozenset(m.lstrip("/") for m in quiet)  # (span names may drop the leading "/")
        self.tracer = FastTracer(service_name, resource, self._on_end)
        self.metrics = AuditMetrics(service_name)

    def _on_end(self, span: FastSpan) -> None:
        if span.kind is SpanKind.CLIENT:
            self.metrics.record_client(span)
        elif self._quiet and span.name.lstrip("/") in self._quiet \
                and span.attributes.get(A.RPC_RESPONSE_STATUS_CODE) in _QUIET_CODES:
            return
        if self._export is not None:
            self._export(span)

    @property
    def stats(self) -> dict[str, Any]:
        """``dropped``, ``export_failures`` and ``exported``, counted in spans and summed over the
        exporters (a span two exporters took counts twice), and ``exporters``: the same per exporter name."""
        if self._processor is None:
            return {"dropped": 0, "export_failures": 0, "exported": 0, "exporters": {}}
        return {**self._processor.stats, "exporters": self._processor.stats_by_exporter}

    def available(self) -> bool:
        """False while a required exporter's queue is full or since its last export failed (``audit.required``)."""
        return self._processor is None or self._processor.healthy(self.required)

    def payload_attributes(self, message: Message) -> dict[str, SafeValue]:
        """The allow-listed (``audit.payload_fields``), redacted fields of a request."""
        if not self.payload_fields:
            return {}
        return payload_attributes(message, self.payload_fields)

    def force_flush(self, timeout: float = 5.0, exporters: Collection[str] | None = None) -> bool:
        """Waits up to ``timeout`` seconds until every span ended so far was exported (or failed) by
        ``exporters`` (names; None: all of them)."""
        if self._processor is None:
            return True
        return self._processor.force_flush(int(timeout * 1000), exporters)

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Exports what is queued, then closes the exporters; False if that took over ``timeout``."""
        ok = True
        if self._processor is not None:
            ok = self._processor.close(timeout)
        return ok


def build_audit(cfg: AuditConfig, *, service_name: str, housekeeping: Collection[str] = ()) -> AuditSink:
    """The sink configured by the ``audit:`` section, for the agent ``service_name``; the successful
    calls of the ``housekeeping`` methods it serves are not traced unless ``audit.trace_housekeeping``.

    Raises ConfigError for an unusable JSONL path or a missing OTLP package.
    """
    return AuditSink(
        service_name,
        make_exporters(cfg),
        queue_size=cfg.queue_size,
        payload_fields=cfg.payload_fields,
        namespace=cfg.service_name,
        quiet=() if cfg.trace_housekeeping else housekeeping,
        required=cfg.required_exporters,
    )
