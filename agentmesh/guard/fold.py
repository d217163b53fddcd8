"""Unicode folding: what the patterns see of non-ASCII text.

The fold of a text: compatibility forms folded (fullwidth, ligatures, circled letters), combining marks
and invisible format characters dropped, common Cyrillic/Greek look-alikes mapped to Latin. The shipped
patterns match ASCII only, so they see the fold's lowercased ASCII *projection*: every other character
as "?". The fold of a text is the fold of each character in turn (NFKC recomposes only what dropped
marks or non-ASCII characters take part in, and nothing composes into ASCII), so the projection is one
``str.translate`` with a table built once, not a normalisation of the whole text:

* :func:`_projection`: each folding character's projection (the reference, table-tested against
  normalising whole texts);
* :func:`project`: what the guard runs: the same table *compacted* (a projection's middle run of "?"
  and spaces, as in U+FDFA's "? ? ? ?", is one "?": no pattern can match a "?", so none can tell them
  apart) as a list indexed by code point, applied a chunk at a time, each distinct chunk once.

Custom patterns (``guard.patterns``) may match any text, so for them :func:`_fold` normalises the whole
text (NFKD in chunks, each paid for: U+FDFA makes 18 characters of one).
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata

from agentmesh.guard.budget import FOLD_COST, PROJECT_COST, Budget

__all__ = ["compact", "fold", "project"]

# Latin look-alikes from Cyrillic and Greek that survive NFKC (a small, common subset of Unicode's
# confusables), mapped to the Latin letter they imitate.
_LOOKALIKE_FROM = "аеорсухіјѕԁһӏԛѵԝаАЕОРСХІЈЅКМНТВαοιρνυτκεχ"
_CONFUSABLES = str.maketrans(_LOOKALIKE_FROM, "aeopcyxijsdhlqvwaaeopcxijskmhtbaoipvutkex")
_HAS_LOOKALIKE = re.compile(f"[{_LOOKALIKE_FROM}]")
# whitespace that NFKC leaves non-ASCII (it folds U+00A0, U+2000-U+200A, U+3000 to a space itself)
_OTHER_SPACE = re.compile("[\x85\u1680\u2028\u2029]")
_DROPPED = frozenset({"Mn", "Me", "Cf"})  # combining marks, format characters (zero-width, invisible)
_QUESTION_MARKS = re.compile(r"\?{2,}")
_BLOCKS = (range(0x80, 0x30000), range(0xE0000, 0xE1000))  # nothing folds, and no mark is, beyond these
_CHUNK = 4096  # characters translated (or normalised) at a time


@functools.cache
def _projection() -> dict[int, str]:
    """What the default patterns see of a non-ASCII character: its fold lowercased, with whitespace as
    " " and every other non-ASCII character as "?" (a run as one: no pattern tells "?" from "??").
    Only the characters whose projection is not "?" are kept (~8k). Built once (~100 ms)."""
    look = set(_LOOKALIKE_FROM)
    table: dict[int, str] = {}
    for block in _BLOCKS:
        for cp in block:
            ch = chr(cp)
            if not (unicodedata.decomposition(ch) or unicodedata.category(ch) in _DROPPED or ch.isspace()
                    or ch in look):
                continue  # a character of its own: "?" (Hangul syllables decompose, into non-ASCII)
            kept = "".join(c for c in unicodedata.normalize("NFKD", ch) if unicodedata.category(c) not in _DROPPED)
            folded = unicodedata.normalize("NFKC", kept).translate(_CONFUSABLES).lower()
            ascii_ = _OTHER_SPACE.sub(" ", folded).encode("ascii", "replace").decode("ascii")
            projected = _QUESTION_MARKS.sub("?", ascii_)
            if projected != "?":
                table[cp] = projected
    return table


def _project(text: str, budget: Budget) -> str:
    """The lowercased ASCII projection of non-ASCII ``text`` (see :func:`_projection`), paid for: the
    reference :func:`project` is tested against."""
    budget.spend(FOLD_COST * len(text))
    return text.translate(_projection()).encode("ascii", "replace").lower().decode("ascii")


_MIDDLE = re.compile(r"\?[?\s]*\?")


def compact(projected: str) -> str:
    """A projection as the guard uses it: its middle run of "?" and whitespace as one "?" (the ends are
    kept: they meet the text around the character)."""
    return _MIDDLE.sub("?", projected)


@functools.cache
def _table() -> list[str]:
    """The compacted projection of every code point, ASCII lowercased, as a list: a look-up
    ``str.translate`` makes faster than in a dict, and that never misses (a miss costs an exception).
    Built once; 9 MB, nearly all of it pointers to one "?"."""
    table = [chr(c).lower() for c in range(0x80)] + ["?"] * (sys.maxunicode + 1 - 0x80)
    for cp, projected in _projection().items():
        table[cp] = compact(projected)
    return table


def project(text: str, budget: Budget) -> str:
    """The compacted projection of ``text`` (ASCII or not), lowercased. A chunk is translated once
    however often it occurs, and each translation is paid for before it is done (its look-ups) and
    after (its projection, which the caller will scan, is bounded by a chunk's worst expansion)."""
    if text.isascii():
        return text.lower()
    table = _table()
    done: dict[str, str] = {}
    parts = []
    for i in range(0, len(text), _CHUNK):
        chunk = text[i:i + _CHUNK]
        part = done.get(chunk)
        if part is None:
            budget.spend(FOLD_COST * len(chunk))
            part = done[chunk] = chunk.translate(table)
            budget.spend(PROJECT_COST * len(part))
        parts.append(part)
    return "".join(parts)


@functools.cache
def _mark_tables() -> tuple[re.Pattern[str], dict[int, None]]:
    """Combining marks and format characters: a character class of those in the BMP (which ``re``
    tests in constant time) and a translate table of the few beyond it. Built once (~50 ms)."""
    bmp: list[tuple[int, int]] = []
    astral: dict[int, None] = {}
    for block in _BLOCKS:
        for cp in block:
            if unicodedata.category(chr(cp)) in _DROPPED:
                if cp > 0xFFFF:
                    astral[cp] = None
                elif bmp and bmp[-1][1] == cp - 1:
                    bmp[-1] = (bmp[-1][0], cp)
                else:
                    bmp.append((cp, cp))
    cls = "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in bmp)
    return re.compile(f"[{cls}]+"), astral


def fold(text: str, budget: Budget) -> str:
    """Non-ASCII text folded whole, for custom patterns.

    Linear with a small constant: normalised in chunks, each paid for before the next, so an input that
    expands many times (U+FDFA: 18 characters) exhausts the budget after a bounded amount of work."""
    parts = []
    for i in range(0, len(text), _CHUNK):
        part = unicodedata.normalize("NFKD", text[i:i + _CHUNK])
        budget.spend(FOLD_COST * len(part))
        parts.append(part)
    marks, astral = _mark_tables()
    kept = marks.sub("", "".join(parts))
    if astral and max(kept, default="\0") > "\uffff":
        kept = kept.translate(astral)
    folded = unicodedata.normalize("NFKC", kept)
    return folded.translate(_CONFUSABLES) if _HAS_LOOKALIKE.search(folded) else folded
