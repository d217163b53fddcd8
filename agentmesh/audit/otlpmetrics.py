"""A member's metrics pushed to an OTLP collector (``metrics.otlp_endpoint``), every ``metrics.otlp_interval``.

The series are those of the member's Prometheus endpoint, read from the same registry
(:func:`agentmesh.audit.prom.member_registry`): :class:`~agentmesh.audit.prom.MemberCollector` stays the one
translation of :class:`~agentmesh.audit.metrics.AuditMetrics` into named, labelled series, and this module
only changes their encoding: each prometheus_client family becomes an OpenTelemetry SDK ``Metric`` (counter
-> monotonic cumulative ``Sum``, gauge -> ``Gauge``, histogram -> cumulative ``Histogram`` with the same
bounds), sent by the SDK's ``OTLPMetricExporter`` (the ``otlp`` extra: its encoding, gRPC channel, TLS rule
and retries). Names are the Prometheus family names (a counter without ``_total``: a collector's Prometheus
exporter adds it back), labels are data point attributes, the member is the resource's ``service.name``.

Why not a ``MeterProvider`` with observable instruments and a ``PeriodicExportingMetricReader``: the
OpenTelemetry API has no asynchronous histogram, so the latency histograms could not be observed from the
aggregates the member already keeps; they would have to be recorded a second time into synchronous SDK
instruments on every call (the request path, which records with a few additions and no lock), and every
series' labels would be worked out twice. The reader only exports what its provider aggregated, so it
cannot carry ready-made aggregates either. What is left to write here is the loop the reader would run:
one daemon thread per member that wakes every interval, reads the registry and exports (a member's
endpoint thread reads it the same way when scraped); nothing global (no global ``MeterProvider``): several
members in one process each push their own.

A push that fails is reported as the span exporters' trouble is (failurelog.py): one WARNING when it
starts (the endpoint as scheme://host:port, the gRPC status), a summary at most every minute while it
lasts, one line when a push succeeds again. The SDK exporter's own line per failed attempt (its endpoint
and the gRPC library's error details) is kept out, as for the trace exporter (otlp.py:
:func:`~agentmesh.audit.otlp.quiet_sdk_logs`).
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_NAMESPACE, Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric as Family

from agentmesh.audit.failurelog import FailureLog, Seen, next_line
from agentmesh.audit.metrics import AuditMetrics
from agentmesh.audit.otlp import quiet_sdk_logs
from agentmesh.audit.prom import member_registry
from agentmesh.config import MeshConfig, safe_endpoint
from agentmesh.errors import ConfigError

__all__ = ["OtlpMetrics", "metrics_data", "otlp_metrics"]

log = logging.getLogger("agentmesh.metrics")
_SCOPE = InstrumentationScope("agentmesh")
_CUMULATIVE = AggregationTemporality.CUMULATIVE


def _number(family: Family, suffix: str, start: int, now: int) -> list[NumberDataPoint]:
    name = family.name + suffix
    return [NumberDataPoint(attributes=dict(s.labels), start_time_unix_nano=start, time_unix_nano=now, value=s.value)
            for s in family.samples if s.name == name]


def _histogram(family: Family, start: int, now: int) -> list[HistogramDataPoint]:
    """Prometheus' cumulative ``_bucket`` / ``_count`` / ``_sum`` samples -> one point per label set, with
    the count of each bucket on its own (OTLP's explicit-bucket form)."""
    series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for s in family.samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        one = series.setdefault(key, {"le": [], "count": 0, "sum": 0.0})
        if s.name == family.name + "_bucket":
            one["le"].append((float(s.labels["le"]), s.value))
        elif s.name == family.name + "_count":
            one["count"] = int(s.value)
        elif s.name == family.name + "_sum":
            one["sum"] = s.value
    points = []
    for key, one in series.items():
        les = sorted(one["le"])
        cumulative = [int(n) for _, n in les]
        counts = [n - before for n, before in zip(cumulative, [0, *cumulative[:-1]], strict=True)]
        points.append(HistogramDataPoint(
            attributes=dict(key), start_time_unix_nano=start, time_unix_nano=now, count=one["count"],
            sum=one["sum"], bucket_counts=counts, explicit_bounds=[le for le, _ in les if le != float("inf")],
            min=None, max=None))  # type: ignore[arg-type]  # (unknown: OTLP's min and max are optional)
    return points


def _metric(family: Family, start: int, now: int) -> Metric | None:
    data: Sum | Gauge | Histogram
    if family.type == "counter":
        data = Sum(_number(family, "_total", start, now), _CUMULATIVE, is_monotonic=True)
    elif family.type == "gauge":
        data = Gauge(_number(family, "", start, now))
    elif family.type == "histogram":
        data = Histogram(_histogram(family, start, now), _CUMULATIVE)
    else:
        return None
    if not data.data_points:
        return None
    return Metric(family.name, family.documentation, "s" if family.name.endswith("_seconds") else "", data)


def metrics_data(families: Iterable[Family], resource: Resource, *, started: float,
                 now: float | None = None) -> MetricsData:
    """The families of a registry as OTLP metric data (cumulative since ``started``, seconds since the epoch)."""
    at = time.time_ns() if now is None else int(now * 1e9)
    start = int(started * 1e9)
    metrics = [m for m in (_metric(f, start, at) for f in families) if m is not None]
    return MetricsData([ResourceMetrics(resource, [ScopeMetrics(_SCOPE, metrics, "")], "")])


class OtlpMetrics:
    """Pushes ``registry`` through ``exporter`` every ``interval`` seconds from a thread of its own (and once
    more on :meth:`close`), until closed. ``where``: the endpoint as logs may show it; ``clock`` (monotonic
    seconds) and ``log_interval`` pace the failure summaries (failurelog.py)."""

    name = "otlp"

    def __init__(self, registry: CollectorRegistry, exporter: MetricExporter, *, resource: Resource,
                 started: float, interval: float, where: str = "otlp",
                 clock: Callable[[], float] = time.monotonic, log_interval: float = 60.0) -> None:
        self.registry = registry
        self.exporter = exporter
        self.resource = resource
        self.started = started
        self.interval = interval
        self.where = where
        self.error: str | None = None  # what the last failed push failed with (a gRPC status, an error class)
        self._clock = clock
        self._log_interval = log_interval
        self._log = FailureLog()
        self._lock = threading.Lock()  # one export at a time (the thread's and force_flush's)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"otlp-metrics-{resource.attributes.get(SERVICE_NAME)}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.push()
        self.push()  # the last counts, as the member stops

    def push(self) -> bool:
        """Reads the registry and exports it now; False when the export failed (logged as failurelog.py says)."""
        with self._lock:
            self.error = None
            series = 0
            try:
                data = metrics_data(self.registry.collect(), self.resource, started=self.started)
                series = sum(len(m.data.data_points) for rm in data.resource_metrics
                             for sm in rm.scope_metrics for m in sm.metrics)
                with quiet_sdk_logs(self):
                    ok = self.exporter.export(data) is MetricExportResult.SUCCESS
            except Exception as e:  # a bug here must not end the pushes for good
                self.error = type(e).__name__  # (the class only: a message could carry a secret)
                ok = False
            self._report(Seen(ok, series, None if ok else self.error or "refused"))
            return ok

    def _report(self, seen: Seen) -> None:
        if not self._log.trouble and seen.ok:
            return
        self._log, line = next_line(self._log, seen, self._clock(), name=self.name, where=self.where,
                                    interval=self._log_interval, unit="series")
        if line is not None:
            log.warning("metrics %s", line)

    def force_flush(self) -> bool:
        """Exports now (tests, and callers that want the current counts out)."""
        return self.push()

    def close(self) -> None:
        """Stops the thread after a last push (given a second; then the exporter is shut down, which ends
        the retries of a push to a collector that does not answer)."""
        self._stop.set()
        self._thread.join(1.0)
        self.exporter.shutdown()
        self._thread.join(5.0)


def otlp_metrics(config: MeshConfig, metrics: AuditMetrics,
                 stats: Callable[[], Mapping[str, Any]] | None = None) -> OtlpMetrics | None:
    """The OTLP push of member ``metrics.member`` when ``metrics.otlp_endpoint`` is set (else None).

    Raises ConfigError without the ``agentmesh[otlp]`` extra.
    """
    cfg = config.metrics
    if not cfg.otlp_endpoint:
        return None
    try:
        mod = importlib.import_module("opentelemetry.exporter.otlp.proto.grpc.metric_exporter")
    except ImportError:
        raise ConfigError("metrics.otlp_endpoint: pushing metrics over OTLP needs "
                          "opentelemetry-exporter-otlp-proto-grpc; install agentmesh[otlp]") from None
    # An http:// endpoint means plaintext; https:// or a bare host:port use TLS (the library's rule).
    exporter: MetricExporter = mod.OTLPMetricExporter(endpoint=cfg.otlp_endpoint, timeout=min(10.0, cfg.otlp_interval))
    resource = Resource.create({SERVICE_NAME: metrics.member, SERVICE_NAMESPACE: config.audit.service_name})
    return OtlpMetrics(member_registry(metrics, stats), exporter, resource=resource, started=metrics.started,
                       interval=cfg.otlp_interval, where=safe_endpoint(cfg.otlp_endpoint))
