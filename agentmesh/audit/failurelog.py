"""What an exporter's worker logs about its trouble, and when: a decision with no I/O.

An exporter in trouble (its last slice failed, or its queue dropped spans) gets one WARNING when the
trouble starts (which exporter, where it writes, the error class: never a message, which could carry a
secret), then at most one summary per ``interval`` seconds while it lasts, with what failed and what
was dropped since the previous line, and one line when it recovers (a slice exported, no new drops).
An exporter that is fine logs nothing. :func:`next_line` takes the state, what the worker just saw and
the time, and returns the new state and the line to log, if any; the worker logs it: the span queues'
(exportqueue.py) and the OTLP metrics push (otlpmetrics.py, counting series rather than spans) alike.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from agentmesh.config import safe_endpoint  # (what ``where`` shows of an endpoint: scheme://host:port)

__all__ = ["FailureLog", "Seen", "next_line", "safe_endpoint"]


@dataclass(frozen=True, slots=True)
class FailureLog:
    """One exporter's logging state."""

    trouble: bool = False
    since: float = 0.0  # when the current summary window began (the trouble's start, or the last line)
    failed: int = 0  # spans whose export failed in the window
    dropped: int = 0  # spans the queue dropped in the window
    seen_dropped: int = 0  # the queue's drop counter at the previous look


@dataclass(frozen=True, slots=True)
class Seen:
    """What the worker saw: the slice it just exported (``ok``: True, False, or None when it exported
    none), its size, the error class of a failed one, and the queue's drop counter (a running total)."""

    ok: bool | None
    spans: int = 0
    error: str | None = None
    dropped: int = 0


def next_line(state: FailureLog, seen: Seen, now: float, *, name: str, where: str,
              interval: float = 60.0, unit: str = "spans") -> tuple[FailureLog, str | None]:
    """The state after ``seen`` at ``now`` (seconds, any monotonic clock), and the line to log; ``unit``:
    what ``Seen.spans`` counts, as the line names it."""
    new_drops = max(0, seen.dropped - state.seen_dropped)
    failed = seen.spans if seen.ok is False else 0
    if not state.trouble:
        state = replace(state, seen_dropped=seen.dropped)
        if seen.ok is not False and not new_drops:
            return state, None
        if seen.ok is False:
            cause = f"failing: {seen.error or 'export refused'} ({failed} {unit} not exported"
            cause += f", {new_drops} dropped)" if new_drops else ")"
        else:
            cause = f"cannot keep up: its queue is full ({new_drops} {unit} dropped)"
        line = f"{name} exporter ({where}) {cause}; a summary at most every {interval:g} s until it recovers"
        return FailureLog(True, now, 0, 0, seen.dropped), line
    failed += state.failed
    dropped = state.dropped + new_drops
    if seen.ok is True and not new_drops:
        return FailureLog(False, now, 0, 0, seen.dropped), (
            f"{name} exporter ({where}) recovered: {failed} {unit} failed / {dropped} dropped since the last line")
    if now - state.since >= interval and (failed or dropped):
        return FailureLog(True, now, 0, 0, seen.dropped), (
            f"{name} exporter: {failed} {unit} failed / {dropped} dropped in the last {now - state.since:.0f} s")
    return FailureLog(True, state.since, failed, dropped, seen.dropped), None
