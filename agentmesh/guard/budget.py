"""The guard's work budget: what each piece of work costs, and the purse it is paid from.

A unit is about one nanosecond of the guard's work on the 2-core machine ``benchmarks/guard.py`` ran on.
A check may spend :data:`WORK_PER_BYTE` units per byte of ``guard.max_request_bytes`` (1 MiB: ~67 ms of
work); every piece is paid for before it is done, so a request that would exceed the budget is refused
with :class:`PayloadTooCostly` after a bounded amount of work, never run for longer.
"""

from __future__ import annotations

from collections.abc import Callable

from agentmesh.errors import PayloadTooCostly

__all__ = ["ATTEMPT_COST", "CANDIDATE_COST", "CHAR_COST", "FOLD_COST", "MATCH_COST", "MESSAGE_COST",
           "PARSE_BYTES", "PASS_COST", "PAUSE_EVERY", "PROJECT_COST", "SCAN_COST", "STRING_COST",
           "WORK_PER_BYTE", "Budget", "too_costly"]

WORK_PER_BYTE = 64
#: a message found by the walk, paid for before its level is parsed (the policy the walk of parsed objects
#: had, a Python step a message: ~1 us); a map's entries are paid for before they are parsed
MESSAGE_COST = 1024
#: bytes of a serialised message the walk parses for a unit (copied a few times at ~0.1 ns a byte;
#: every level parses the levels below it again)
PARSE_BYTES = 4
#: a string collected from a message
STRING_COST = 128
#: a character of the text the shipped patterns see (joined, lowercased, copied)
CHAR_COST = 4
#: a character scanned by the custom patterns (``guard.patterns``), when the shipped ones do not run
SCAN_COST = 16
#: a character of that text, per pass over it (the regex engine skipping to the pass's literal prefix)
PASS_COST = 1
#: a place where the regex engine tries a pass's anchors (a word start, or a "<" for its own pass)
ATTEMPT_COST = 32
#: a candidate found (an anchor word where a pattern may start, with or without the rest of it): the
#: policy that refuses text packed with anchors
CANDIDATE_COST = 384
#: a candidate of a rare anchor tried where it is (a search, a regex match and a Python step), rather
#: than a pass over the text for it
MATCH_COST = 1024
#: a non-ASCII character projected to what the shipped patterns see (one table look-up), and each
#: character of the projection
FOLD_COST = 32
PROJECT_COST = 16


def too_costly() -> PayloadTooCostly:
    return PayloadTooCostly("request is too costly to inspect: the payload guard's work budget is exhausted "
                            "(text that Unicode folding expands many times, or too many messages or pattern "
                            "candidates)")


#: the work between two calls of a budget's ``pause`` (about a millisecond)
PAUSE_EVERY = 1 << 20


class Budget:
    """What is left to spend; :meth:`spend` raises ``refuse()`` (PayloadTooCostly) when it runs out.

    ``pause``, if given, is called about every :data:`PAUSE_EVERY` units spent: a check run in a thread
    lets the event loop's thread take the GIL there (the guard's work is C calls of about a
    millisecond each, which a thread switch cannot interrupt)."""

    __slots__ = ("_next_pause", "left", "pause", "refuse")

    def __init__(self, units: int, refuse: Callable[[], Exception] = too_costly,
                 pause: Callable[[], object] | None = None) -> None:
        self.left = units
        self.refuse = refuse
        self.pause = pause
        self._next_pause = units - PAUSE_EVERY

    def spend(self, units: int) -> None:
        self.left -= units
        if self.left < 0:
            raise self.refuse()
        if self.pause is not None and self.left < self._next_pause:
            self._next_pause = self.left - PAUSE_EVERY
            self.pause()
