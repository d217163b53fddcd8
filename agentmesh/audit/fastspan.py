"""A small tracer whose spans are plain records, behind the OpenTelemetry tracing API.

The OpenTelemetry SDK spends ~30 us per span on the calling thread (``Span.__init__``, locks,
attribute validation), on both sides of every mesh call. :class:`FastTracer` implements the same
``opentelemetry.trace.Tracer`` API with ``__slots__`` records instead:

* :meth:`FastTracer.start_span` takes the parent from ``context`` (default: the current one) as the
  OpenTelemetry API does, so ``trace.use_span``, ``trace.set_span_in_context`` and
  :mod:`agentmesh.audit.propagation` work unchanged; without a valid parent it starts a new trace.
  Every span is recorded: a remote parent's sampled flag is ignored.
* Attributes are kept in a plain dict, without per-call validation: callers pass str, int, float,
  bool or lists of str. Redaction happens in the exporters (:func:`~agentmesh.audit.redact.safe_attributes`),
  in the export thread, as it always did.
* :meth:`FastSpan.end` (the first one only) hands the finished span to the sink's queue; once
  ended, a span ignores every further change, so the export thread reads it without a lock.
* :meth:`FastSpan.record_exception` records the exception's type, never its message.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

__all__ = ["EXCEPTION_EVENT", "FastSpan", "FastTracer", "SpanEvent"]

#: the event :meth:`FastSpan.record_exception` adds; its only attribute is ``exception.type``
EXCEPTION_EVENT = "exception"
#: (name, attributes, timestamp in ns since the epoch)
SpanEvent = tuple[str, Mapping[str, Any], int]

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_getrandbits = random.getrandbits
_time_ns = time.time_ns
_current_span = trace.get_current_span


def _span_id() -> int:
    span_id = _getrandbits(64)
    while not span_id:
        span_id = _getrandbits(64)
    return span_id


def _trace_id() -> int:
    trace_id = _getrandbits(128)
    while not trace_id:
        trace_id = _getrandbits(128)
    return trace_id


def _exception_type(exception: BaseException) -> str:
    kind = type(exception)
    module = kind.__module__
    return kind.__qualname__ if not module or module == "builtins" else f"{module}.{kind.__qualname__}"


class FastSpan(trace.Span):
    """One span: a record the tracer fills and the exporters read (after :meth:`end`).

    ``parent`` is the parent's SpanContext (None for a root); times are ns since the epoch;
    ``end_time`` is None until the span ends.
    """

    __slots__ = (
        "_context",
        "_flags",
        "attributes",
        "end_time",
        "events",
        "kind",
        "links",
        "name",
        "parent",
        "span_id",
        "start_time",
        "status_code",
        "status_description",
        "trace_id",
        "tracer",
    )

    def __init__(
        self,
        tracer: FastTracer,
        name: str,
        kind: SpanKind,
        trace_id: int,
        span_id: int,
        parent: SpanContext | None,
        attributes: dict[str, Any],
        start_time: int,
        flags: int = 3,
    ) -> None:
        self.tracer = tracer
        self.name = name
        self.kind = kind
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent = parent
        self.attributes = attributes
        self.start_time = start_time
        self.end_time: int | None = None
        self.events: list[SpanEvent] = []
        self.links: list[Link] | None = None
        self.status_code = StatusCode.UNSET
        self.status_description: str | None = None
        self._context: SpanContext | None = None
        self._flags = flags  # bit 0: record_exception, bit 1: set_status_on_exception (used by __exit__)

    # -- identity -------------------------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        ctx = self._context
        if ctx is None:  # built once, on first use (a span without children never needs it)
            ctx = self._context = SpanContext(self.trace_id, self.span_id, is_remote=False, trace_flags=_SAMPLED)
        return ctx

    def is_recording(self) -> bool:
        return self.end_time is None

    # -- changes, ignored once ended ------------------------------------------------------------

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self.end_time is None:
            self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if self.end_time is None:
            self.attributes.update(attributes)

    def add_event(self, name: str, attributes: types.Attributes = None, timestamp: int | None = None) -> None:
        if self.end_time is None:
            self.events.append((name, dict(attributes) if attributes else {}, timestamp or _time_ns()))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self.end_time is None and context.is_valid:
            if self.links is None:
                self.links = []
            self.links.append(Link(context, attributes))

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """The OpenTelemetry rules: UNSET is ignored, and so is anything after OK.

        An ERROR description is kept up to its first ": ": ``trace.use_span`` writes
        "Type: message" for an escaping exception, and the message may hold a secret.
        """
        if self.end_time is not None or self.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            code, description = status.status_code, status.description
        else:
            code = status
        if code is StatusCode.UNSET:
            return
        self.status_code = code
        self.status_description = description.partition(": ")[0] if description and code is StatusCode.ERROR else None

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """Adds an ``exception`` event naming the exception's type; its message and traceback may
        hold secrets, so neither is recorded (nor are ``attributes``)."""
        self.add_event(EXCEPTION_EVENT, {"exception.type": _exception_type(exception)}, timestamp)

    def end(self, end_time: int | None = None) -> None:
        """Finishes the span and queues it for export; a second call is ignored."""
        if self.end_time is not None:
            return
        self.end_time = end_time or _time_ns()
        self.tracer.on_end(self)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if isinstance(exc_val, Exception):
            self.fail(exc_val, record_exception=bool(self._flags & 1), set_status=bool(self._flags & 2))
        self.end()

    def fail(self, exception: Exception, *, record_exception: bool = True, set_status: bool = True) -> None:
        """Records an exception that escaped the span's block: an event and an ERROR status, both
        naming only the exception's type."""
        if record_exception:
            self.record_exception(exception, escaped=True)
        if set_status:
            self.set_status(StatusCode.ERROR, type(exception).__name__)

    def __repr__(self) -> str:
        return f"FastSpan({self.name!r}, trace_id={self.trace_id:032x}, span_id={self.span_id:016x})"


def _drop(span: FastSpan) -> None:
    pass


class FastTracer(trace.Tracer):
    """The tracer of one audit sink: ``service_name`` and ``resource`` describe every span it starts;
    ``on_end`` receives each span once, when it ends (it must never block)."""

    def __init__(
        self,
        service_name: str,
        resource: Any = None,
        on_end: Callable[[FastSpan], None] | None = None,
    ) -> None:
        self.service_name = service_name
        self.resource = resource
        self.on_end: Callable[[FastSpan], None] = on_end or _drop

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> FastSpan:
        found = _current_span(context).get_span_context()
        parent = found if found.trace_id and found.span_id else None  # a valid (maybe remote) parent
        span = FastSpan(self, name, kind, parent.trace_id if parent is not None else _trace_id(), _span_id(), parent,
                        dict(attributes) if attributes else {}, start_time or _time_ns(),
                        record_exception | (set_status_on_exception << 1))
        if links:
            for link in links:
                span.add_link(link.context, link.attributes)
        return span

    def start_child(self, name: str, parent: SpanContext | None, kind: SpanKind,
                    attributes: Mapping[str, Any]) -> FastSpan:
        """A span whose parent is ``parent`` (a valid SpanContext, e.g. the caller's from
        :func:`agentmesh.audit.propagation.remote_parent`) or, with None, the root of a new trace: what
        :meth:`start_span` does with a context holding that parent, without building the context."""
        return FastSpan(self, name, kind, parent.trace_id if parent is not None else _trace_id(), _span_id(), parent,
                        dict(attributes), _time_ns())

    @contextmanager
    def start_as_current_span(  # type: ignore[override]  # contextmanager, not the API's private one
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[FastSpan]:
        """As the OpenTelemetry API's; an exception leaving the block is recorded by type only."""
        span = self.start_span(name, context, kind, attributes, links, start_time,
                               record_exception, set_status_on_exception)
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                yield span
        except Exception as e:
            span.fail(e, record_exception=record_exception, set_status=set_status_on_exception)
            raise
        finally:
            if end_on_exit:
                span.end()
