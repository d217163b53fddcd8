"""A member's metrics as Prometheus series, on its own registry and HTTP endpoint.

:class:`MemberCollector` reads one member's :class:`~agentmesh.audit.metrics.AuditMetrics` (and its
audit sink's span counts) when scraped, in the endpoint's thread; every member has its own
``CollectorRegistry`` (never prometheus_client's global one: several members can live in one
process). :class:`MetricsEndpoint` serves it with prometheus_client's HTTP server. The series and
their labels are listed in docs/OBSERVABILITY.md.
"""

from __future__ import annotations

import http.server
import ipaddress
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, MetricsHandler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from agentmesh.audit.metrics import BUCKETS, GAUGES, AuditMetrics, Series
from agentmesh.errors import ConfigError

__all__ = [
    "METRICS_ADDRESS_ENV", "METRICS_FD_ENV", "MemberCollector", "MetricsEndpoint", "member_registry", "metrics_address",
]

#: the address this process's member serves its metrics on, over the config (set by ``agentmesh up``,
#: which runs one member per process)
METRICS_ADDRESS_ENV = "AGENTMESH_METRICS_ADDRESS"
#: with it, the descriptor of a socket already listening there: ``up`` binds it and holds it across the
#: member's restarts, so a restarted member is back on the same address and no other process takes it meanwhile
METRICS_FD_ENV = "AGENTMESH_METRICS_FD"

SERVER_LABELS = ("source", "principal_class", "grpc_service", "grpc_method", "grpc_code", "decision")
_LE = (*(str(float(b)) for b in BUCKETS), "+Inf")  # as prometheus_client writes them


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    out, total = [], 0
    for le, n in zip(_LE, counts, strict=True):
        total += n
        out.append((le, float(total)))
    return out


def _histogram(name: str, doc: str, labels: list[str], series: Mapping[tuple[str, ...], Series]
               ) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, s in series.items():
        family.add_metric(list(values), _buckets(s.buckets), s.sum)
    return family


def _merged(items: Sequence[tuple[tuple[str, ...], Series]], keep: Callable[[tuple[str, ...]], tuple[str, ...]]
            ) -> dict[tuple[str, ...], Series]:
    """The series summed over the labels ``keep`` leaves out."""
    out: dict[tuple[str, ...], Series] = {}
    for labels, s in items:
        m = out.get(key := keep(labels))
        if m is None:
            m = out[key] = Series()
        m.count += s.count
        m.sum += s.sum
        m.buckets = [a + b for a, b in zip(m.buckets, s.buckets, strict=True)]
    return out


class MemberCollector(Collector):
    """The Prometheus series of one member: ``metrics``, and ``stats`` (its audit sink's span counts)."""

    def __init__(self, metrics: AuditMetrics, stats: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.metrics = metrics
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        me = m.member
        server = list(m.server.items())  # (the loop thread may add series meanwhile: one atomic copy)
        requests = CounterMetricFamily(
            "agentmesh_server_requests", "Calls this member served, by caller and outcome.",
            labels=["destination", *SERVER_LABELS])
        for labels, s in server:
            requests.add_metric([me, *labels], float(sum(s.buckets)))
        yield requests
        # latency by source, method and status (not by principal class or decision: fewer series)
        yield _histogram("agentmesh_server_request_duration_seconds",
                         "Time this member took to answer a call, from its first byte to its status.",
                         ["destination", "source", "grpc_service", "grpc_method", "grpc_code"],
                         {(me, *k): s for k, s in _merged(server, lambda v: (v[0], v[2], v[3], v[4])).items()})
        made = list(m.client.items())
        calls = CounterMetricFamily("agentmesh_client_requests", "Calls this member made, by target and status.",
                                    labels=["source", "destination", "grpc_service", "grpc_method", "grpc_code"])
        for target, s in made:
            calls.add_metric([me, *target], float(sum(s.buckets)))
        yield calls
        yield _histogram("agentmesh_client_request_duration_seconds",
                         "Time a call this member made took, as its client saw it.",
                         ["source", "destination", "grpc_service", "grpc_method", "grpc_code"],
                         {(me, *k): s for k, s in made})
        yield _counter("agentmesh_ratelimit_decisions", "Rate-limit results of the calls this member served "
                       "(backend_open / backend_closed: the limiter's backend failed and failure_mode decided).",
                       ["destination", "result"], {(me, k): v for k, v in list(m.ratelimit.items())})
        yield _counter("agentmesh_guard_hits", "Payload guard matches, by pattern name and action.",
                       ["destination", "pattern", "action"], {(me, *k): v for k, v in list(m.guard.items())})
        yield _counter("agentmesh_auth_failures", "Calls refused by the certificate, token or delegation "
                       "checks, by the step and a reason from a fixed set.",
                       ["destination", "stage", "reason"], {(me, *k): v for k, v in list(m.auth_failures.items())})
        yield _counter("agentmesh_metrics_overflow", "Series folded into 'other' past the bound on series.",
                       ["member"], {(me,): m.overflow})
        start = GaugeMetricFamily("agentmesh_member_start_time_seconds",
                                  "When this member's metrics started (seconds since the epoch).", labels=["member"])
        start.add_metric([me], m.started)
        yield start
        for name, read in list(m.gauges.items()):
            value = read()
            if value is not None:
                gauge = GaugeMetricFamily(name, GAUGES[name], labels=["member"])
                gauge.add_metric([me], value)
                yield gauge
        if self.stats is not None:
            yield _audit_spans(me, self.stats())


def _audit_spans(member: str, stats: Mapping[str, Any]) -> CounterMetricFamily:
    """``agentmesh_audit_spans_total`` from an audit sink's stats: by exporter when they have ``exporters``
    (``{name: {outcome: n}}``: :attr:`agentmesh.audit.sink.AuditSink.stats`), else by outcome only."""
    doc = ("Audit spans by exporter and outcome (exported; dropped: its queue was full; export_failures: "
           "it refused them).")
    by_exporter = stats.get("exporters")
    if isinstance(by_exporter, Mapping):
        return _counter("agentmesh_audit_spans", doc, ["member", "exporter", "outcome"], {
            (member, name, k): v for name, counts in by_exporter.items() for k, v in counts.items()
            if isinstance(v, int)})
    return _counter("agentmesh_audit_spans", doc, ["member", "outcome"],
                    {(member, k): v for k, v in stats.items() if isinstance(v, int)})


def _counter(name: str, doc: str, labels: list[str], values: Mapping[tuple[str, ...], int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in values.items():
        family.add_metric(list(key), float(value))
    return family


def member_registry(metrics: AuditMetrics, stats: Callable[[], Mapping[str, Any]] | None = None
                    ) -> CollectorRegistry:
    """A registry of its own for one member (plus nothing else: no process or platform collectors,
    which would repeat for every member of a process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MemberCollector(metrics, stats))
    return registry


def metrics_address(config: Any, name: str) -> str | None:
    """Where member ``name`` serves its metrics: :data:`METRICS_ADDRESS_ENV`, else the config's
    ``metrics`` section (:meth:`agentmesh.config.MeshConfig.metrics_address`); None: nowhere."""
    address: str | None = os.environ.get(METRICS_ADDRESS_ENV) or config.metrics_address(name)
    return address


def _inherited(address: str) -> socket.socket | None:
    """The listening socket :data:`METRICS_FD_ENV` hands this process for ``address`` (taken once). It must
    be a TCP socket listening on exactly ``address``; anything else (a stale value, another listener of the
    process) is a ConfigError, and the descriptor is left open: it is checked through a duplicate, and only
    a socket that passes is adopted (and closed by the endpoint)."""
    value = os.environ.get(METRICS_FD_ENV)
    if not value or address != os.environ.get(METRICS_ADDRESS_ENV):
        return None
    del os.environ[METRICS_FD_ENV]
    refused = ConfigError(f"metrics: {METRICS_FD_ENV}={value} is not a TCP socket listening on {address} "
                          f"(agentmesh up sets it for its members; unset it)")
    try:
        fd = int(value)
        if fd < 0 or not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise refused
        with socket.socket(fileno=os.dup(fd)) as probe:  # closing the duplicate leaves ``fd`` as it was
            listening = (probe.family in (socket.AF_INET, socket.AF_INET6) and probe.type == socket.SOCK_STREAM
                         and probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 0
                         and _bound_to(probe, address))
    except (OSError, ValueError):
        raise refused from None
    if not listening:
        raise refused
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    return sock


def _bound_to(sock: socket.socket, address: str) -> bool:
    """Whether ``sock`` is bound to ``address`` (``host:port``; the host as a bind would resolve it)."""
    host, _, port = address.rpartition(":")
    wanted = {ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo(
        host.strip("[]") or None, int(port), sock.family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)}
    bound_host, bound_port = sock.getsockname()[:2]
    return bool(bound_port == int(port) and ipaddress.ip_address(bound_host) in wanted)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # a scrape in progress never holds up the process's exit


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsEndpoint:
    """``/metrics`` (any path, in fact) of one registry over HTTP at ``address`` (``host:port``; port 0:
    any free one) with prometheus_client's handler, served by a thread of its own; :attr:`address` is
    where it listens."""

    #: seconds between the server's checks for :meth:`close`
    POLL = 0.05

    def __init__(self, registry: CollectorRegistry, address: str) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        server = _Server6 if ":" in host else _Server
        try:
            inherited = _inherited(address)
            self._httpd = server((host, int(port)), MetricsHandler.factory(registry),
                                 bind_and_activate=inherited is None)
            if inherited is not None:  # already bound and listening
                self._httpd.socket.close()
                self._httpd.socket = inherited
                self._httpd.server_address = inherited.getsockname()
        except (OSError, ValueError) as e:
            raise ConfigError(f"metrics: cannot listen on {address}: {getattr(e, 'strerror', None) or e}") from None
        bound = self._httpd.server_address[1]
        self.address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": self.POLL},
                                        name=f"metrics-{self.address}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def close(self) -> None:
        """Stops serving and closes the socket (blocks about :data:`POLL` seconds)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
