"""Reading members' metrics endpoints back as a view of the mesh: one row per edge (source member ->
destination member) with its request rate, latency quantiles, error and denial rates. Used by
``agentmesh top`` and ``agentmesh graph``.

Pure but for :func:`scrape_all` (HTTP GETs): :func:`parse` turns exposition text into per-edge totals
(:class:`Totals`), :func:`edges` turns two sets of totals (or one, since the members started) into
:class:`EdgeView` rows. An edge is seen from its destination's server metrics; an edge whose
destination was not scraped is seen from its source's client metrics instead (``seen_by="client"``:
refusals are then read from the status alone).
"""

from __future__ import annotations

import concurrent.futures
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from agentmesh.audit.metrics import BUCKETS, HOUSEKEEPING_METHODS

__all__ = ["DENIALS", "EdgeView", "Scrape", "Totals", "edges", "metrics_url", "parse", "quantile", "scrape_all"]

#: decisions that are the mesh refusing a call (not an error of the callee)
DENIALS = frozenset({"deny", "ratelimited", "guard"})
#: statuses a client sees for a refusal, for edges seen from the client side
_DENIAL_CODES = frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED"})
_HOUSEKEEPING = frozenset(tuple(m.lstrip("/").rsplit("/", 1)) for m in HOUSEKEEPING_METHODS)
Edge = tuple[str, str]


@dataclass
class Totals:
    """What one edge has counted so far: requests, errors, denials, and latency counts per bucket
    (:data:`agentmesh.audit.metrics.BUCKETS`, then +Inf; not cumulative)."""

    requests: float = 0.0
    errors: float = 0.0
    denials: float = 0.0
    buckets: list[float] = field(default_factory=lambda: [0.0] * (len(BUCKETS) + 1))
    seen_by: str = "server"
    since: float = 0.0  # when the member that counted it started (seconds since the epoch)

    def minus(self, before: Totals | None) -> Totals:
        if before is None:
            return self
        return Totals(self.requests - before.requests, self.errors - before.errors, self.denials - before.denials,
                      [a - b for a, b in zip(self.buckets, before.buckets, strict=True)], self.seen_by, self.since)


@dataclass
class Scrape:
    """The totals of every edge, at ``at`` (seconds since the epoch); ``unreachable``: the endpoints
    that did not answer, with why."""

    at: float
    edges: dict[Edge, Totals] = field(default_factory=dict)
    members: set[str] = field(default_factory=set)
    unreachable: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EdgeView:
    source: str
    destination: str
    requests: float  # in the window
    rps: float
    error_rate: float  # fraction of requests that failed (not refusals)
    denial_rate: float  # fraction of requests the mesh refused (policy, token, rate limit, guard)
    p50: float | None  # seconds; None: no request in the window
    p99: float | None
    seen_by: str

    def as_dict(self) -> dict[str, object]:
        return {"source": self.source, "destination": self.destination, "requests": self.requests,
                "rps": round(self.rps, 3), "error_rate": round(self.error_rate, 4),
                "denial_rate": round(self.denial_rate, 4),
                "p50_ms": None if self.p50 is None else round(self.p50 * 1000, 3),
                "p99_ms": None if self.p99 is None else round(self.p99 * 1000, 3), "seen_by": self.seen_by}


def _bucket_index(le: str) -> int | None:
    if le == "+Inf":
        return len(BUCKETS)
    try:
        return BUCKETS.index(float(le))
    except ValueError:
        return None


def parse(texts: Iterable[str], *, at: float, housekeeping: bool = False) -> Scrape:
    """The edges of the exposition texts of several members; the control plane's housekeeping calls
    (members' trust stream, token refreshes: long streams that would swamp the latencies) are left out
    unless ``housekeeping``."""
    out = Scrape(at)
    server: dict[Edge, Totals] = {}
    client: dict[Edge, Totals] = {}
    starts: dict[str, float] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = s.labels
                if s.name == "agentmesh_member_start_time_seconds":
                    starts[labels.get("member", "")] = s.value
                    out.members.add(labels.get("member", ""))
                    continue
                if not housekeeping and (labels.get("grpc_service"), labels.get("grpc_method")) in _HOUSEKEEPING:
                    continue
                if s.name == "agentmesh_server_requests_total":
                    t = server.setdefault((labels["source"], labels["destination"]), Totals())
                    t.requests += s.value
                    if labels.get("decision") in DENIALS:
                        t.denials += s.value
                    elif labels.get("grpc_code") != "OK":
                        t.errors += s.value
                elif s.name == "agentmesh_client_requests_total":
                    t = client.setdefault((labels["source"], labels["destination"]), Totals(seen_by="client"))
                    t.requests += s.value
                    code = labels.get("grpc_code")
                    if code in _DENIAL_CODES:
                        t.denials += s.value
                    elif code != "OK":
                        t.errors += s.value
                elif s.name.endswith("_request_duration_seconds_bucket"):
                    i = _bucket_index(labels.get("le", ""))
                    side = server if s.name.startswith("agentmesh_server") else client
                    t = side.setdefault((labels["source"], labels["destination"]),
                                        Totals(seen_by="server" if side is server else "client"))
                    if i is not None:
                        t.buckets[i] += s.value  # cumulative per series: made per bucket below
    for side in (server, client):
        for (src, dst), t in side.items():
            t.since = starts.get(dst if side is server else src, 0.0)
    # the buckets were summed cumulative counts: per-bucket counts are their differences
    for t in (*server.values(), *client.values()):
        t.buckets = [b - (t.buckets[i - 1] if i else 0.0) for i, b in enumerate(t.buckets)]
    scraped = {dst for _, dst in server} | set(starts)
    out.edges.update(server)
    for edge, t in client.items():
        if edge[1] not in scraped:
            out.edges[edge] = t
    return out


def quantile(q: float, buckets: Sequence[float]) -> float | None:
    """The ``q`` quantile (seconds) of per-bucket counts over :data:`BUCKETS` (+Inf last), as
    Prometheus's ``histogram_quantile`` estimates it (linear within a bucket; in the +Inf bucket: the
    highest finite bound); None without observations."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank, seen = q * total, 0.0
    for i, n in enumerate(buckets):
        if n > 0 and seen + n >= rank:
            if i == len(BUCKETS):
                return BUCKETS[-1]
            lower = BUCKETS[i - 1] if i else 0.0
            return lower + (BUCKETS[i] - lower) * max(0.0, rank - seen) / n
        seen += n
    return BUCKETS[-1]


def edges(now: Scrape, before: Scrape | None = None) -> list[EdgeView]:
    """One row per edge: over the window since ``before`` or, without it, since the member that
    counted the edge started; sorted by source, then destination."""
    rows = []
    for edge, t in sorted(now.edges.items()):
        prev = before.edges.get(edge) if before is not None else None
        d = t.minus(prev)
        start = before.at if before is not None else t.since
        window = now.at - start if start else 0.0
        n = d.requests
        rows.append(EdgeView(edge[0], edge[1], n, n / window if window > 0 else 0.0,
                             d.errors / n if n else 0.0, d.denials / n if n else 0.0,
                             quantile(0.5, d.buckets), quantile(0.99, d.buckets), t.seen_by))
    return rows


def _get(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (http URLs the operator named)
        body: bytes = r.read()
    return body.decode("utf-8")


def scrape_all(urls: Sequence[str], *, at: float, timeout: float = 2.0, housekeeping: bool = False) -> Scrape:
    """GETs every endpoint at once and parses what answered; the others are in ``unreachable``."""
    texts: list[str] = []
    failed: dict[str, str] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(16, len(urls)))) as pool:
        futures = {url: pool.submit(_get, url, timeout) for url in urls}
        for url, future in futures.items():
            try:
                texts.append(future.result())
            except (OSError, urllib.error.URLError, ValueError) as e:
                failed[url] = str(getattr(e, "reason", None) or e.__class__.__name__)
    scrape = parse(texts, at=at, housekeeping=housekeeping)
    scrape.unreachable = failed
    return scrape


def metrics_url(address: str) -> str:
    """The URL of a member's endpoint from its ``host:port`` (a URL is kept as it is)."""
    if "://" in address:
        return address
    return f"http://{address}/metrics"
