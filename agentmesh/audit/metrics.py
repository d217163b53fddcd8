"""The golden metrics of one mesh member, aggregated in place where its calls end.

Recorded on the event loop thread with a dict lookup and a few additions per call (no lock, no
OpenTelemetry or prometheus_client call on the call's path); :mod:`agentmesh.audit.prom` turns them
into Prometheus series when the member's endpoint is scraped (names in docs/OBSERVABILITY.md):

* every call this member served, when its audit span ends (:meth:`AuditMetrics.record_server`, from
  ``AuditStage.finish``): counted by source member, class of the principal, method, status, decision;
  its latency in a histogram; rate-limit results, guard hits by pattern, authentication failures by
  stage and reason (all read from what the chain put on the call and its span);
* every call this member made, when its client span ends (:meth:`AuditMetrics.record_client`);
* values read when scraped (:meth:`AuditMetrics.watch`): certificate and token seconds to expiry,
  revocation data age.

Labels are bounded whatever callers send: a principal is never a label (its *class* is: ``none``,
``member``, ``mesh`` or a configured external issuer's name); a method the server does not serve is
:data:`UNKNOWN` (its name is the caller's choice); a source that is not a member of the config is
:data:`OTHER`; past ``max_series`` distinct series per family, new ones are folded into one
:data:`OTHER` series and counted in ``overflow``.
"""

from __future__ import annotations

import bisect
import re
import time
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry.trace import SpanKind

from agentmesh.audit import attributes as A

if TYPE_CHECKING:
    from agentmesh.audit.fastspan import FastSpan
    from agentmesh.context import CallContext

__all__ = [
    "BUCKETS",
    "CERT_EXPIRY",
    "GAUGES",
    "HOUSEKEEPING_METHODS",
    "OTHER",
    "REVOCATION_AGE",
    "TOKEN_EXPIRY",
    "UNKNOWN",
    "AuditMetrics",
    "Series",
    "auth_failure_reason",
    "principal_class",
]

#: histogram bucket upper bounds, in seconds (the last bucket, +Inf, is implied)
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: the method and service of a call to a method the server does not serve
UNKNOWN = "unknown"
#: a source outside the config, or any label of a series past the family's bound
OTHER = "other"
#: what members call on the control plane to keep themselves going: the trust stream and their own
#: token's refresh (``audit.trace_housekeeping`` says whether their successful calls are traced)
HOUSEKEEPING_METHODS = frozenset({
    "/agentmesh.v1.IdentityService/WatchTrust",
    "/agentmesh.v1.TokenService/IssueAgentToken",
})

CERT_EXPIRY = "agentmesh_certificate_expiry_seconds"
TOKEN_EXPIRY = "agentmesh_token_expiry_seconds"  # noqa: S105 (a metric name)
REVOCATION_AGE = "agentmesh_revocation_data_age_seconds"
#: the values :meth:`AuditMetrics.watch` reads when scraped: name -> help
GAUGES = {
    CERT_EXPIRY: "Seconds until the member's certificate expires (negative: expired).",
    TOKEN_EXPIRY: "Seconds until the member's own token expires (none: no token yet).",
    REVOCATION_AGE: "Seconds since the trust data the member checks revocations with was signed.",
}

_CODE_NAMES = frozenset(code.name for code in grpc.StatusCode)
_CHECK = re.compile(r"[a-z][a-z0-9-]{0,31}")  # a DelegationError.check: a short name chosen in code
#: (words in a refusal's reason, the reason label): the first that matches names it
_REASONS = (
    (("not yet valid", "in the future"), "not_yet_valid"),
    (("expired", "validity period"), "expired"),
    (("revoked",), "revoked"),
    (("missing", "no verified"), "missing"),
    (("kid unknown",), "unknown_key"),
    (("signature",), "signature"),
    (("issuer",), "issuer"),
    (("audience",), "audience"),
    (("bound to", "not bound", "binding", "does not match the peer"), "binding"),
    (("cannot act as a principal",), "not_a_principal"),
    (("algorithm", "header", "compressed", "type not accepted"), "header"),
    (("claim",), "claims"),
    (("malformed", "too large", "duplicate", "not a json"), "malformed"),
    (("trust domain", "not issued", "chain"), "untrusted"),
    (("key usage", "client authentication", "ca certificate", "uri san", "spiffe id", "key", "parsed"),
     "certificate"),
)


def auth_failure_reason(stage: str, reason: str, check: str | None = None) -> str:
    """The reason label of a refusal by the identity, token or delegation step: a delegation's failed
    check (a name from code), else one of a fixed set found in the refusal's (safe) text, else ``other``."""
    if stage == "delegation" and check is not None:
        return check if _CHECK.fullmatch(check) else OTHER
    text = reason.lower()
    for words, label in _REASONS:
        if any(w in text for w in words):
            return label
    return OTHER


def principal_class(principal: str | None, txn_sub: str | None, issuers: Iterable[str]) -> str:
    """The class of a call's principal, never the principal: ``none`` (not authenticated), ``member``
    (a member acting for itself), for a delegated call the name of the external issuer of its principal
    (``<iss>#<sub>``, :func:`agentmesh.tokens.delegation.principal_of`; ``issuers``: those the config
    trusts), else ``mesh`` (a principal of the mesh's own issuer)."""
    if principal is None:
        return "none"
    if txn_sub is None:
        return "member"
    for iss in issuers:
        if txn_sub.startswith(iss + "#"):
            return iss
    return "mesh"


class Series:
    """One series: a count, the sum of the seconds observed, and a count per bucket of :data:`BUCKETS`
    (the last one is +Inf)."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.sum += seconds
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1


#: a server series' labels: source, principal_class, grpc_service, grpc_method, grpc_code, decision
ServerLabels = tuple[str, str, str, str, str, str]
#: a client series' labels: destination, grpc_service, grpc_method, grpc_code
ClientLabels = tuple[str, str, str, str]


class AuditMetrics:
    """The golden metrics of member ``member`` (see the module's docstring).

    ``members`` (the config's member names) and ``issuers`` (the external issuers' names) bound the
    source and principal-class labels; :meth:`know` sets them once the config is at hand.
    """

    def __init__(self, member: str = "", *, members: Collection[str] = (), issuers: Collection[str] = (),
                 max_series: int = 2048, clock: Callable[[], float] = time.time) -> None:
        self.member = member
        self.clock = clock
        self.started = clock()
        self.max_series = max_series
        self.members: frozenset[str] = frozenset(members)
        self.issuers: tuple[str, ...] = tuple(issuers)
        # keyed by the call's own values (each bounded); the labels are worked out once per key
        self._server_keys: dict[tuple[Any, ...], tuple[ServerLabels, Series]] = {}
        self.server: dict[ServerLabels, Series] = {}
        self._client_keys: dict[tuple[Any, ...], Series] = {}
        self.client: dict[ClientLabels, Series] = {}
        self.ratelimit: dict[str, int] = {}  # allowed | limited | backend_open | backend_closed
        self.guard: dict[tuple[str, str], int] = {}  # (pattern, action)
        self.auth_failures: dict[tuple[str, str], int] = {}  # (stage, reason)
        self.overflow = 0
        self.gauges: dict[str, Callable[[], float | None]] = {}

    def know(self, *, members: Collection[str], issuers: Collection[str]) -> None:
        """The config's member names and external issuers (labels outside them are :data:`OTHER`)."""
        self.members = frozenset(members)
        self.issuers = tuple(issuers)
        self._server_keys.clear()

    def watch(self, name: str, read: Callable[[], float | None]) -> None:
        """A value read when the metrics are scraped (None: no value now), one of :data:`GAUGES`."""
        if name not in GAUGES:
            raise ValueError(f"unknown gauge {name!r}")
        self.gauges[name] = read

    # ------------------------------------------------------------------ server side
    def record_server(self, call: CallContext, code: grpc.StatusCode, seconds: float, *, registered: bool,
                      span: FastSpan | None = None) -> None:
        """One call this member served, ended with ``code`` after ``seconds``; ``call`` is the chain's
        CallContext, ``span`` its server span (refusals and guard hits are read from its events);
        ``registered``: the method is one the server serves."""
        decision = call.decision or "none"
        if span is not None and span.events:
            decision = self._events(span.events, decision, span.attributes)
        remaining = call.ratelimit_remaining
        if remaining is not None:
            result = "limited" if decision == "ratelimited" else "allowed"
            self.ratelimit[result] = self.ratelimit.get(result, 0) + 1
        elif span is not None and decision == "allow" and span.attributes.get(A.RATELIMIT_DEGRADED):
            self.ratelimit["backend_open"] = self.ratelimit.get("backend_open", 0) + 1
        peer = call.peer
        txn = call.txn
        principal = call.principal
        key = (peer.name if peer is not None else None,
               "none" if principal is None else "member" if txn is None else principal_class(
                   principal, txn.sub, self.issuers),
               call.method if registered else None, code, decision)
        hit = self._server_keys.get(key)
        if hit is None:
            hit = self._server_series(key)
        hit[1].observe(seconds)

    def _server_series(self, key: tuple[Any, ...]) -> tuple[ServerLabels, Series]:
        if len(self._server_keys) >= 4 * self.max_series:  # (a cache: bounded too)
            self._server_keys.clear()
        name, cls, method, code, decision = key
        if name is None:
            source = "none"
        elif not self.members or name in self.members:
            source = name
        else:
            source = OTHER
        service, _, meth = method.lstrip("/").rpartition("/") if method is not None else (UNKNOWN, "", UNKNOWN)
        labels: ServerLabels = (source, cls, service, meth, code.name, decision)
        series = self.server.get(labels)
        if series is None:
            if len(self.server) >= self.max_series:
                self.overflow += 1
                labels = (OTHER, OTHER, OTHER, OTHER, code.name, decision)
                series = self.server.get(labels)
            if series is None:
                series = self.server[labels] = Series()
        hit = self._server_keys[key] = (labels, series)
        return hit

    def _events(self, events: Iterable[tuple[str, Any, int]], decision: str, attributes: dict[str, Any]) -> str:
        """Counts the refusal and guard hits on a span; returns the decision label (``guard`` for a
        call the payload guard refused)."""
        for name, attrs, _ in events:
            if name == A.EVENT_GUARD:
                pattern = attrs.get(A.GUARD_PATTERN)
                if isinstance(pattern, str):
                    k = (pattern, str(attrs.get(A.GUARD_ACTION, "")))
                    if k in self.guard or len(self.guard) < 64:
                        self.guard[k] = self.guard.get(k, 0) + 1
            elif name == A.EVENT_DENIED:
                stage = attrs.get(A.DENIAL_STAGE)
                reason = str(attrs.get(A.DENIAL_REASON, ""))
                if stage == "guard" and decision == "deny":
                    decision = "guard"
                elif stage in ("identity", "token", "delegation"):
                    check = attributes.get(A.DELEGATION_CHECK)
                    k = (stage, auth_failure_reason(stage, reason, check if isinstance(check, str) else None))
                    self.auth_failures[k] = self.auth_failures.get(k, 0) + 1
                elif stage == "ratelimit" and decision != "ratelimited" and "rate-limit" in reason:
                    self.ratelimit["backend_closed"] = self.ratelimit.get("backend_closed", 0) + 1
        return decision

    # ------------------------------------------------------------------ client side
    def record_client(self, span: FastSpan) -> None:
        """A client span that just ended (kind CLIENT): the call this member made to
        ``agentmesh.target``, its status (``rpc.response.status_code``; none: it never started) and its
        duration."""
        attrs = span.attributes
        key = (attrs.get(A.TARGET), attrs.get(A.RPC_METHOD), attrs.get(A.RPC_RESPONSE_STATUS_CODE))
        series = self._client_keys.get(key)
        if series is None:
            series = self._client_series(key)
        series.observe(max(0.0, ((span.end_time or 0) - span.start_time) / 1e9))

    def _client_series(self, key: tuple[Any, ...]) -> Series:
        if len(self._client_keys) >= 4 * self.max_series:
            self._client_keys.clear()
        target, full_method, status = key  # rpc.method: "pkg.Service/Method"
        service, _, method = full_method.rpartition("/") if isinstance(full_method, str) else ("", "", "")
        code = status if status in _CODE_NAMES else "NOT_STARTED"  # none: ended before it was sent
        labels: ClientLabels = (str(target or UNKNOWN), str(service or UNKNOWN), str(method or UNKNOWN), code)
        series = self.client.get(labels)
        if series is None:
            if len(self.client) >= self.max_series:
                self.overflow += 1
                labels = (OTHER, OTHER, OTHER, code)
                series = self.client.get(labels)
            if series is None:
                series = self.client[labels] = Series()
        self._client_keys[key] = series
        return series

    def on_span_end(self, span: FastSpan) -> None:
        """Records a span that just ended when it is a client call's (the sink calls this for each)."""
        if span.kind is SpanKind.CLIENT:
            self.record_client(span)
