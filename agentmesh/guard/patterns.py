"""The shipped prompt-injection patterns, and the matcher that finds them in linear time.

Each pattern is given as one reference regex (:data:`DEFAULT_PATTERNS`, matched against lowercased
text) and as anchored rules (:data:`_RULES`): a literal ``anchor`` a match starts with, and the ``tail``
that must follow it. The matcher never tries the patterns at every position of the text:

1. one pass finds every *candidate*, an anchor word where a word starts: it reads a copy of the text in
   which every character that is not a word character is a space, with a regex whose literal prefix
   is that space (the regex engine skips to it fast and tries the anchors only there);
2. an anchor found often is then read by a pass of its own, a regex with the anchor as literal prefix
   and its rules' tails in a lookahead, each tail in a capturing group of its pattern; an anchor found
   rarely is tried only where it is (from 8 such anchors on, one more pass finds them all);
3. the anchors that are not words ("<|", "<<", "[inst]", "[/inst]", "##" at a line start) have a pass
   each, only when the text contains them.

Every pass, attempt of the regex engine and candidate is paid for before it is done (``budget``).
A pattern matches the text exactly when its reference regex does (``tests/test_guard_engine.py``
compares them): a word anchor is tried where a word starts, as the reference's ``\\b`` demands; a run of
"<" is read from its start and its tails tried after it (where the reference's ``<<`` and ``<|`` can
match); ``^`` is a newline, the text being matched with one in front.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter

from agentmesh.guard.budget import ATTEMPT_COST, CANDIDATE_COST, MATCH_COST, PASS_COST, Budget

__all__ = ["DEFAULT_PATTERNS", "Matcher"]

# possessive (*+): filler words never need giving back (no target word is one)
_ANY = r"(?:(?:all|any|the|your|of|my|these|those)\s+)*+"
_FORGET = ("ignore", "disregard", "forget", "override", "bypass", "skip")
_SHOW = ("reveal", "print", "show", "output", "repeat", "leak", "display", "dump", "expose", "tell", "give",
         "send")
_SHOW_ME = ("tell", "give", "send")  # a verb of _SHOW only with "me": "tell me", not "tell"
_VERB_FORGET = "(?:" + "|".join(_FORGET) + ")"
_VERB_SHOW = r"(?:reveal|print|show|output|repeat|leak|display|dump|expose|tell\s+me|give\s+me|send\s+me)"
_PREVIOUS = (r"(?:previous|prior|above|earlier|preceding|original)\s+"
             r"(?:instructions?|directions?|prompts?|rules|messages|context)")
_SYSTEM = r"system\s+(?:prompt|message|instructions?)"
_PROMPTS = (r"(?:system\s+prompt|hidden\s+instructions|initial\s+instructions|original\s+instructions"
            r"|system\s+message)")
_SECRETS = r"(?:api\s+|secret\s+|private\s+|access\s+)?(?:keys?|secrets?|credentials|passwords?|tokens)\b"
_PERSONA = r"(?:dan\b|in\s+developer\s+mode|an?\s+unrestricted|jailbroken|unfiltered)"
_MARKER = r"(?:system|developer)\s+(?:prompt|message|instructions)\b"
_ROLE_TAG = r"(?:im_start|im_end|system|endoftext)"
_HEADING = r"(?:system|new[ \t]+instructions)[ \t]*:"


@dataclass(frozen=True, slots=True)
class _Pattern:
    name: str  # what results and errors carry
    regex: str  # the reference, lowercase: matched against the lowercased text
    hints: tuple[str, ...]  # the anchors of its rules (see _RULES): literals any match starts with


#: The shipped prompt-injection patterns, used when ``guard.default_patterns`` is true.
DEFAULT_PATTERNS: tuple[_Pattern, ...] = (
    _Pattern("ignore-previous-instructions", rf"\b{_VERB_FORGET}\s+{_ANY}{_PREVIOUS}", _FORGET),
    _Pattern("disregard-system-prompt", rf"\b{_VERB_FORGET}\s+{_ANY}{_SYSTEM}", _FORGET),
    _Pattern("jailbreak-persona",
             rf"\byou\s+are\s+now\s+{_PERSONA}|\bdo\s+anything\s+now\b|\bdeveloper\s+mode\s+enabled\b",
             ("you", "do", "developer")),
    _Pattern("reveal-system-prompt", rf"\b{_VERB_SHOW}\s+(?:me\s+)?{_ANY}{_PROMPTS}", _SHOW),
    _Pattern("secret-exfiltration", rf"\b{_VERB_SHOW}\s+(?:me\s+)?{_ANY}{_SECRETS}", _SHOW),
    _Pattern(
        "role-injection-marker",
        rf"\b(?:begin|end)\s+{_MARKER}|<\|\s*{_ROLE_TAG}\s*\|>|\[/?inst\]|<<\s*/?sys\s*>>"
        rf"|^[ \t]*#{{2,}}[ \t]*{_HEADING}",  # [ \t], not \s: no scan across lines
        ("begin", "end", "<|", "[inst]", "[/inst]", "<<", "##"),
    ),
)


@dataclass(frozen=True, slots=True)
class _Rule:
    """Where its pattern can match: at an occurrence of ``anchor`` followed by ``lead`` and ``tail``.
    ``lead`` is shared by every rule of the anchor, so the matcher reads it once for all of them."""

    anchor: str
    tail: str
    lead: str = ""


def _after(words: tuple[str, ...], lead: str, tail: str) -> tuple[_Rule, ...]:
    return tuple(_Rule(w, tail, (r"\s+me" if w in _SHOW_ME else "") + lead) for w in words)


_FORGET_LEAD = rf"\s+{_ANY}"
_SHOW_LEAD = rf"\s+(?:me\s+)?{_ANY}"  # "me" can be given back to no avail: no target starts with "me"
#: pattern name -> its anchored rules, which together match exactly where its reference regex does
_RULES: dict[str, tuple[_Rule, ...]] = {
    "ignore-previous-instructions": _after(_FORGET, _FORGET_LEAD, _PREVIOUS),
    "disregard-system-prompt": _after(_FORGET, _FORGET_LEAD, _SYSTEM),
    "jailbreak-persona": (_Rule("you", rf"\s+are\s+now\s+{_PERSONA}"), _Rule("do", r"\s+anything\s+now\b"),
                          _Rule("developer", r"\s+mode\s+enabled\b")),
    "reveal-system-prompt": _after(_SHOW, _SHOW_LEAD, _PROMPTS),
    "secret-exfiltration": _after(_SHOW, _SHOW_LEAD, _SECRETS),
    "role-injection-marker": (
        *_after(("begin", "end"), "", rf"\s+{_MARKER}"),
        _Rule("<|", rf"(?:(?<=\|)|\|)\s*{_ROLE_TAG}\s*\|>"),  # after "<|", or after a run of "<"
        _Rule("<<", r"(?<=<<)\s*/?sys\s*>>"),
        _Rule("[inst]", r"inst\]"),
        _Rule("[/inst]", r"/inst\]"),
        _Rule("##", rf"[ \t]*{_HEADING}"),
    ),
}

#: the anchors that are not words, by the character a pass for them starts with, and what a candidate
#: is after it: a run of "<" whole, or "<|" (where a run starts; "<<" and "<|" tried after it), "##" at
#: a line start, and "[inst]" or "[/inst]" (their rules' tail is the rest of the anchor)
_SYMBOLS = {"<|": "<", "<<": "<", "[inst]": "[", "[/inst]": "[", "##": "\n"}
_SYMBOL_HEAD = {"[": "", "\n": r"[ \t]*##++"}
_RUN = re.compile(r"<<++")  # a run of "<": one candidate
#: what the text must contain for a symbol pass to run at all
_SYMBOL_NEEDLE = {"<": "<", "[": "inst]", "\n": "##"}
#: ASCII that is not a word character (\w: [a-z0-9_] in lowercased ASCII) as a space: in the copy the
#: word pass reads, a space is before every word, so a candidate there is a space and an anchor word
_SPACES = bytes(b if chr(b).isalnum() or chr(b) == "_" else 0x20 for b in range(256))
_SEGMENT = 1 << 17  # bytes the word pass reads in one C call
_RARE = 8  # rare anchors found by one pass for them all, from so many on


def _alternation(words: list[str]) -> str:
    """Words as one regex, by first letter, the longest first."""
    by_first: dict[str, list[str]] = {}
    for w in sorted(words, key=len, reverse=True):
        by_first.setdefault(w[0], []).append(re.escape(w[1:]))
    return "|".join(f"{c}(?:{'|'.join(rest)})" for c, rest in sorted(by_first.items()))


@functools.lru_cache(maxsize=256)
def _words_regex(words: tuple[bytes, ...]) -> re.Pattern[bytes]:
    """The anchor ``words`` where a word starts, in the text with every other character a space."""
    return re.compile(f" ({_alternation([w.decode() for w in words])})".encode())


@dataclass(frozen=True, slots=True)
class _Hits:
    """A regex that matches where a rule of its anchor(s) matches; which patterns, by capturing group."""

    regex: re.Pattern[str]
    groups: tuple[int, ...]  # the pattern index of each capturing group

    def best(self, lower: str) -> int | None:
        """The first pattern (index) it finds anywhere in ``lower``: one pass."""
        found = self.regex.findall(lower)
        if not found:
            return None
        if len(self.groups) == 1:
            return self.groups[0]
        return min(i for j, i in enumerate(self.groups) if any(map(itemgetter(j), found)))

    def best_at(self, lower: str, at: int) -> int | None:
        """The first pattern (index) whose rule matches at ``at``."""
        m = self.regex.match(lower, at)
        return None if m is None else next(i for g, i in zip(m.groups(), self.groups, strict=True) if g)


@dataclass(frozen=True, slots=True)
class _Symbol:
    first: str  # the character every candidate starts with
    needle: str
    count: Callable[[str], int]  # the candidates in the text
    hits: tuple[_Hits, ...]


def _tails(anchor: str, rules: list[tuple[int, _Rule]], groups: list[int]) -> str:
    """The rules' tails in one lookahead, each in a capturing group (its pattern appended to ``groups``)."""
    leads = {rule.lead for _, rule in rules}
    assert len(leads) == 1, f"the rules of {anchor!r} share their lead"
    groups.extend(index for index, _ in rules)
    return f"(?={leads.pop()}(?:{'|'.join(f'({rule.tail})' for _, rule in rules)}))"


def _word(anchor: str, rules: list[tuple[int, _Rule]]) -> _Hits:
    """An anchor word where a word starts (its literal is the regex's prefix: found fast), then its tails."""
    groups: list[int] = []
    a = re.escape(anchor)
    return _Hits(re.compile(f"{a}(?<!\\w{a}){_tails(anchor, rules, groups)}"), tuple(groups))


def _symbol(first: str, anchors: dict[str, list[tuple[int, _Rule]]]) -> _Symbol:
    """A pass for the anchors that are not words. "<" has two regexes, each with a literal prefix of
    two characters (so the engine tries neither at every "<" of HTML): a run of "<" from its start, with
    the tails of "<<" and "<|" after it, and "<|" where no run is; its candidates are counted with a run
    regex and two counts."""
    if first == "<":
        groups: list[int] = []
        run = f"<<(?<!<<<)<*+(?:{'|'.join(_tails(a, rules, groups) for a, rules in anchors.items())})"
        pipe: list[int] = []
        alone = f"<\\|(?<!<<\\|){_tails('<|', anchors['<|'], pipe)}"
        return _Symbol("<", "<", lambda t: len(_RUN.findall(t)) + t.count("<|") - t.count("<<|"),
                       (_Hits(re.compile(run), tuple(groups)), _Hits(re.compile(alone), tuple(pipe))))
    groups = []
    head = _SYMBOL_HEAD[first]
    tails = "|".join(_tails(a, rules, groups) for a, rules in anchors.items())
    count = re.compile(re.escape(first) + (head or "(?:" + "|".join(r.tail for rules in anchors.values()
                                                                     for _, r in rules) + ")"))
    return _Symbol(first, _SYMBOL_NEEDLE[first], lambda t: len(count.findall(t)),
                   (_Hits(re.compile(f"{re.escape(first)}{head}(?:{tails})"), tuple(groups)),))


class Matcher:
    """The shipped patterns named ``names`` (in the order that decides which one a result names)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        words: dict[str, list[tuple[int, _Rule]]] = {}
        symbols: dict[str, dict[str, list[tuple[int, _Rule]]]] = {}
        for index, name in enumerate(names):
            for rule in _RULES[name]:
                if rule.anchor in _SYMBOLS:
                    symbols.setdefault(_SYMBOLS[rule.anchor], {}).setdefault(rule.anchor, []).append((index, rule))
                else:
                    words.setdefault(rule.anchor, []).append((index, rule))
        self._words = {a.encode(): _word(a, rules) for a, rules in words.items()}
        self._symbols = tuple(_symbol(first, anchors) for first, anchors in symbols.items())
        # every anchor word where a word starts, in one pass: its literal prefix (a space) is found fast
        self._candidates = _words_regex(tuple(a.encode() for a in words)) if words else None

    def first(self, lower: str, budget: Budget) -> int | None:
        """The index of the first pattern (in ``names`` order) found in ``lower`` (lowercased ASCII that
        starts with a newline), or None. Each piece of work is paid for before it is done: a pass that
        counts the candidates (and the regex engine's attempts in it); then the candidates it found;
        then, for each anchor found (each symbol pass that found some), a pass that reads its tails."""
        text = lower.encode("ascii")
        best: int | None = None
        if self._candidates is not None:
            spaced = text.translate(_SPACES)
            found: list[bytes] = []
            # in segments that end where a space starts the next (no candidate spans two): C calls of
            # about a millisecond, each paid for before it runs
            start, spaces = 0, 0
            while start < len(spaced):
                end = spaced.find(b" ", start + _SEGMENT)
                end = len(spaced) if end < 0 else end
                segment = spaced[start:end]
                spaces += segment.count(b" ")
                budget.spend(PASS_COST * 2 * len(segment) + ATTEMPT_COST * segment.count(b" "))
                candidates = self._candidates.findall(segment)
                budget.spend(CANDIDATE_COST * len(candidates))
                found.extend(candidates)
                start = end
            if found:  # (most requests name no anchor word: nothing more to do for the words)
                best = self._anchors(found, lower, text, spaced, spaces, budget)
        for symbol in self._symbols:
            if symbol.needle in lower:
                budget.spend(PASS_COST * len(text) + ATTEMPT_COST * text.count(symbol.first.encode()))
                counted = symbol.count(lower)
                budget.spend(CANDIDATE_COST * counted)
                for hits in symbol.hits if counted else ():
                    budget.spend(PASS_COST * len(text))
                    index = hits.best(lower)
                    if index is not None and (best is None or index < best):
                        best = index
        return best

    def _anchors(self, found: list[bytes], lower: str, text: bytes, spaced: bytes, spaces: int,
                 budget: Budget) -> int | None:
        """The first pattern whose anchor word is among ``found`` (the candidates :meth:`first` found)."""
        best: int | None = None
        counts = Counter(found)
        # an anchor found often gets a pass of its own; the rare ones are tried where they are, found
        # by one more pass over the words for all of them (a pass each costs more once they are many)
        rare = sorted(a for a, n in counts.items() if n * MATCH_COST < PASS_COST * len(text))
        rare = rare if len(rare) >= _RARE else []
        for anchor in counts.keys() - set(rare):
            budget.spend(PASS_COST * len(text))
            index = self._words[anchor].best(lower)
            if index is not None and (best is None or index < best):
                best = index
        if rare:
            budget.spend(PASS_COST * 2 * len(text) + ATTEMPT_COST * spaces
                         + MATCH_COST * sum(counts[a] for a in rare))
            for m in _words_regex(tuple(rare)).finditer(spaced):
                index = self._words[m.group(1)].best_at(lower, m.start() + 1)
                if index is not None and (best is None or index < best):
                    best = index
        return best


@functools.lru_cache(maxsize=8)
def matcher(names: tuple[str, ...]) -> Matcher:
    return Matcher(names)
