"""The payload guard: a size limit and prompt-injection patterns over every string of a request.

Pure: it takes a request and returns a :class:`GuardResult`. For a protobuf message it reads every set
string field (``walk``: nested messages, repeated fields, maps, ``Struct``) down to :data:`MAX_DEPTH`
levels; a message nested deeper counts as a match of the pattern ``nesting-too-deep``, so depth cannot
hide text. Results name the pattern, never the matched text. Non-ASCII text is folded before matching
(``fold``: compatibility forms, combining marks and invisible characters removed, common look-alikes
mapped to Latin); the shipped patterns (``patterns``) see its ASCII projection and are matched where
their anchor words start words, found by one regex pass, in linear time.

The work is bounded and linear in the input (``budget``): walking, projecting, scanning and pattern
candidates are paid from a budget of ``WORK_PER_BYTE`` units (about a nanosecond each) per byte of
``guard.max_request_bytes``, each before it is done; a request that would exceed it raises
:class:`PayloadTooCostly` (``benchmarks/guard.py`` measures the worst cases). The walk reads the
serialised message (which gives its size, checked first) a level at a time, in C. Custom patterns
(``guard.patterns``) may match any text, so for them non-ASCII text is folded whole (NFKD in chunks,
each paid for), and their own cost is the operator's.

Other request types (a raw-bytes handler, whose request deserializer is None, or a custom codec) never
crash it: ``bytes``/``bytearray``/``memoryview`` are checked by their length, and the patterns run over
their text (UTF-8; bytes that are not UTF-8 are matched over their decodable text only, and the result
says so: ``unchecked="not-utf8"``); ``str`` is checked as its UTF-8 encoding; anything else passes
unchecked with ``unchecked="unsupported-type"`` and a reason, for the caller to record.

:meth:`PayloadGuard.check_within` runs a check only as far as a smaller budget: the server stage runs
what fits inline and hands the rest to a thread (``agentmesh.interceptors.limits``), passing a
``pause`` that the budget calls about every millisecond of work. A request stream's messages are
checked inline as the handler reads them, each within the budget.

The guard is a tripwire, not a proof: encodings (base64, leetspeak), other languages and phrasing
the patterns do not know get through. Agents must still treat payloads as untrusted data.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import Message

from agentmesh.config import GuardConfig
from agentmesh.errors import ConfigError, PayloadBlocked, PayloadTooLarge
from agentmesh.guard.budget import CHAR_COST, MESSAGE_COST, SCAN_COST, WORK_PER_BYTE, Budget
from agentmesh.guard.fold import _CONFUSABLES as _CONFUSABLES  # the reference projection, for the tests
from agentmesh.guard.fold import _DROPPED as _DROPPED
from agentmesh.guard.fold import _OTHER_SPACE as _OTHER_SPACE
from agentmesh.guard.fold import _mark_tables, _table, fold, project
from agentmesh.guard.fold import _project as _project
from agentmesh.guard.fold import _projection as _projection
from agentmesh.guard.patterns import _RULES as _RULES  # the anchored rules, for the tests
from agentmesh.guard.patterns import DEFAULT_PATTERNS, matcher
from agentmesh.guard.walk import MAX_DEPTH, collect

__all__ = ["DEFAULT_PATTERNS", "MAX_DEPTH", "NOT_UTF8", "UNSUPPORTED", "WORK_PER_BYTE", "GuardResult",
           "PayloadGuard", "raise_if_blocked"]

_Budget = Budget  # the name the tests know it by
TOO_DEEP = "nesting-too-deep"


@dataclass(frozen=True, slots=True)
class GuardResult:
    blocked: bool
    flagged: bool
    pattern: str | None  # the NAME of the pattern that matched, never the text
    reason: str
    #: None when the whole request was checked; else what was not, when nothing matched:
    #: "not-utf8" (bytes that are not UTF-8 text: the patterns saw only their decodable text) or
    #: "unsupported-type" (neither protobuf nor bytes nor text: neither size nor patterns checked)
    unchecked: str | None = None


PASSED = GuardResult(False, False, None, "no guarded pattern found")
NOT_UTF8 = "not-utf8"
UNSUPPORTED = "unsupported-type"
_BYTES = (bytes, bytearray, memoryview)


class _OverInline(Exception):
    """The check needs more than the budget :meth:`PayloadGuard.check_within` was given."""


class PayloadGuard:
    """Built once from :class:`GuardConfig`; :meth:`check` runs on every request."""

    def __init__(self, cfg: GuardConfig) -> None:
        self._cfg = cfg
        self._block = cfg.action == "block"
        self._units = WORK_PER_BYTE * cfg.max_request_bytes
        # (name, compiled regex), run case-insensitively on the text as sent (after normalisation).
        self._custom: list[tuple[str, re.Pattern[str]]] = []
        # the default patterns' names, in order, and their matcher, run on the lowercased projection
        self._defaults = tuple(p.name for p in DEFAULT_PATTERNS) if cfg.default_patterns else ()
        self._matcher = matcher(self._defaults)
        for i, rx in enumerate(cfg.patterns):
            try:
                self._custom.append((f"custom-{i}", re.compile(rx, re.IGNORECASE | re.MULTILINE)))
            except re.error as e:
                raise ConfigError(f"guard.patterns[{i}]: invalid regular expression {rx!r}: {e}") from None
        # built once, at start-up rather than on the first request that needs them
        if self._defaults:
            _table()
        if self._custom:
            _mark_tables()

    def check(self, message: object, pause: Callable[[], object] | None = None) -> GuardResult:
        """Raises :class:`PayloadTooLarge` over the size limit; else names the first pattern found.

        Any request type is accepted (see the module docstring); a result whose ``unchecked`` is set
        passed without a full check, and its ``reason`` says why. Raises :class:`PayloadTooCostly`
        when checking it would exceed the work budget (see ``WORK_PER_BYTE``). ``pause`` is called
        about every millisecond of work (see ``Budget``).
        """
        return self._check(message, Budget(self._units, pause=pause))

    def check_within(self, message: object, units: int) -> GuardResult | None:
        """:meth:`check`, if it takes at most ``units`` of work (or less than the full budget allows);
        else None, after at most ``units`` of work, and the caller runs :meth:`check`."""
        if units >= self._units:
            return self.check(message)
        try:
            return self._check(message, Budget(units, _OverInline))
        except _OverInline:
            return None

    def _check(self, message: object, budget: Budget) -> GuardResult:
        if isinstance(message, Message):
            data = message.SerializeToString()  # what ByteSize costs, and the walk reads it
            self._check_size(len(data))
            if not self._defaults and not self._custom:
                return PASSED
            budget.spend(MESSAGE_COST)
            text = collect(message, data, budget)
            if text is None:
                return self._hit(TOO_DEEP)
            name = self._match(text, budget)
            return PASSED if name is None else self._hit(name)
        if isinstance(message, str):
            self._check_size(len(message.encode("utf-8", "surrogatepass")))
            name = self._match(message, budget)
            return PASSED if name is None else self._hit(name)
        if isinstance(message, _BYTES):
            return self._check_bytes(bytes(message), budget)
        kind = type(message).__qualname__
        return GuardResult(False, False, None,
                           f"request of type {kind} is neither protobuf nor bytes: size and patterns not checked",
                           UNSUPPORTED)

    def _check_size(self, size: int) -> None:
        if size > self._cfg.max_request_bytes:
            raise PayloadTooLarge(
                f"request is {size} bytes, over the limit of {self._cfg.max_request_bytes} bytes"
            )

    def _check_bytes(self, data: bytes, budget: Budget) -> GuardResult:
        """Raw bytes: the size, then the patterns over the text. Bytes that are not UTF-8 (binary, or
        text with a stray byte) are matched over their decodable runs, so text cannot hide behind one
        invalid byte; invalid bytes become U+FFFD, which no pattern spans."""
        self._check_size(len(data))
        if not self._defaults and not self._custom:
            return PASSED
        try:
            text, utf8 = data.decode("utf-8"), True
        except UnicodeDecodeError:
            text, utf8 = data.decode("utf-8", "replace"), False
        name = self._match(text, budget)
        if name is not None:
            return self._hit(name)
        if utf8:
            return PASSED
        return GuardResult(False, False, None,
                           f"request is {len(data)} bytes, not UTF-8 text: size checked, "
                           "patterns only over its decodable text", NOT_UTF8)

    def match(self, text: str) -> str | None:
        """The name of the first pattern found in ``text``, or None; raises :class:`PayloadTooCostly`
        past the work budget."""
        return self._match(text, Budget(self._units))

    def _match(self, text: str, budget: Budget) -> str | None:
        if not text:
            return None
        if self._defaults:
            budget.spend(CHAR_COST * len(text))
            lower = "\n" + project(text, budget)
            budget.spend(CHAR_COST * len(lower))
            index = self._matcher.first(lower, budget)
            if index is not None:
                return self._defaults[index]
        if not self._custom:
            return None
        if text.isascii():
            if not self._defaults:
                budget.spend(SCAN_COST * len(text))
        else:
            text = fold(text, budget)
        for name, rx in self._custom:
            if rx.search(text) is not None:
                return name
        return None

    def _hit(self, name: str) -> GuardResult:
        if self._block:
            return GuardResult(True, False, name, f"request blocked by payload guard: {name}")
        return GuardResult(False, True, name, f"request flagged by payload guard: {name}")


def raise_if_blocked(result: GuardResult) -> None:
    """Raises :class:`PayloadBlocked` (PERMISSION_DENIED) for a blocked result."""
    if result.blocked:
        raise PayloadBlocked(f"request blocked by payload guard: {result.pattern}")
