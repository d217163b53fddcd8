"""The payload guard: a size limit and prompt-injection patterns over every string of a request.

Pure: it takes a request and returns a :class:`GuardResult`. For a protobuf message it walks all set
string fields recursively (nested messages, repeated fields, map keys and values, and so the contents of
``google.protobuf.Struct``/``Value``/``ListValue``) down to :data:`MAX_DEPTH` levels; a message
nested deeper counts as a match of the pattern ``nesting-too-deep``, so depth cannot hide text.
Results name the pattern, never the matched text. Non-ASCII text is folded before matching
(compatibility forms, combining marks and invisible characters removed, common Cyrillic/Greek
look-alikes mapped to Latin). The shipped patterns match ASCII only, so they see the text's ASCII
projection: one ``str.translate`` with a table built once (each non-ASCII character as the fold makes it,
every other character "?"), not a normalisation of the whole text. They are matched anchored: one
regex pass finds every occurrence of their anchor words (``hints``), and each is one attempt (see
``_RULES``), not every position of the text.

The work is bounded and linear in the input: projecting, scanning, candidates and the message walk are
paid from a budget of ``WORK_PER_BYTE`` units per byte of ``guard.max_request_bytes``; a request that would
exceed it raises :class:`PayloadTooCostly` before more work is done (``benchmarks/guard.py`` measures
the worst cases). Custom patterns (``guard.patterns``) may match any text, so for them non-ASCII text is
folded whole (NFKD in chunks, each paid for).

Other request types (a raw-bytes handler, whose request deserializer is None, or a custom codec) never
crash it: ``bytes``/``bytearray``/``memoryview`` are checked by their length, and the patterns run over
their text (UTF-8; bytes that are not UTF-8 are matched over their decodable text only, and the result
says so: ``unchecked="not-utf8"``); ``str`` is checked as its UTF-8 encoding; anything else passes
unchecked with ``unchecked="unsupported-type"`` and a reason, for the caller to record.

The guard is a tripwire, not a proof: encodings (base64, leetspeak), other languages and phrasing
the patterns do not know get through. Agents must still treat payloads as untrusted data.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from agentmesh.config import GuardConfig
from agentmesh.errors import ConfigError, PayloadBlocked, PayloadTooCostly, PayloadTooLarge

__all__ = ["DEFAULT_PATTERNS", "MAX_DEPTH", "NOT_UTF8", "UNSUPPORTED", "GuardResult", "PayloadGuard",
           "raise_if_blocked"]

MAX_DEPTH = 64
TOO_DEEP = "nesting-too-deep"

# possessive (*+): filler words never need giving back (no target word is one), and sre runs a long
# "all all all ..." run ~5x faster without the backtracking states
_ANY = r"(?:(?:all|any|the|your|of|my|these|those)\s+)*+"
_FORGET = ("ignore", "disregard", "forget", "override", "bypass", "skip")
_SHOW = ("reveal", "print", "show", "output", "repeat", "leak", "display", "dump", "expose", "tell",
         "give", "send")
_VERB_FORGET = "(?:" + "|".join(_FORGET) + ")"
_VERB_SHOW = r"(?:reveal|print|show|output|repeat|leak|display|dump|expose|tell\s+me|give\s+me|send\s+me)"


@dataclass(frozen=True, slots=True)
class _Pattern:
    name: str  # what results and errors carry
    regex: str  # lowercase: matched against the lowercased text, which is faster than re.IGNORECASE
    hints: tuple[str, ...]  # the anchors of its rules (see _RULES): literals, one of which any match contains


#: The shipped prompt-injection patterns, used when ``guard.default_patterns`` is true.
DEFAULT_PATTERNS: tuple[_Pattern, ...] = (
    _Pattern(
        "ignore-previous-instructions",
        rf"\b{_VERB_FORGET}\s+{_ANY}(?:previous|prior|above|earlier|preceding|original)\s+"
        r"(?:instructions?|directions?|prompts?|rules|messages|context)",
        _FORGET,
    ),
    _Pattern("disregard-system-prompt", rf"\b{_VERB_FORGET}\s+{_ANY}system\s+(?:prompt|message|instructions?)",
             _FORGET),
    _Pattern(
        "jailbreak-persona",
        r"\byou\s+are\s+now\s+(?:dan\b|in\s+developer\s+mode|an?\s+unrestricted|jailbroken|unfiltered)"
        r"|\bdo\s+anything\s+now\b|\bdeveloper\s+mode\s+enabled\b",
        ("now", "developer"),
    ),
    _Pattern(
        "reveal-system-prompt",
        rf"\b{_VERB_SHOW}\s+(?:me\s+)?{_ANY}(?:system\s+prompt|hidden\s+instructions|initial\s+instructions"
        r"|original\s+instructions|system\s+message)",
        _SHOW,
    ),
    _Pattern(
        "secret-exfiltration",
        rf"\b{_VERB_SHOW}\s+(?:me\s+)?{_ANY}(?:api\s+|secret\s+|private\s+|access\s+)?"
        r"(?:keys?|secrets?|credentials|passwords?|tokens)\b",
        _SHOW,
    ),
    _Pattern(
        "role-injection-marker",
        r"\b(?:begin|end)\s+(?:system|developer)\s+(?:prompt|message|instructions)\b"
        r"|<\|\s*(?:im_start|im_end|system|endoftext)\s*\|>|\[/?inst\]|<<\s*/?sys\s*>>"
        r"|^[ \t]*#{2,}[ \t]*(?:system|new[ \t]+instructions)[ \t]*:",  # [ \t], not \s: no scan across lines
        ("begin", "end", "<|", "[inst]", "[/inst]", "<<", "##"),
    ),
)

# Latin look-alikes from Cyrillic and Greek that survive NFKC (a small, common subset of Unicode's
# confusables), mapped to the Latin letter they imitate.
_LOOKALIKE_FROM = "аеорсухіјѕԁһӏԛѵԝаАЕОРСХІЈЅКМНТВαοιρνυτκεχ"
_CONFUSABLES = str.maketrans(_LOOKALIKE_FROM, "aeopcyxijsdhlqvwaaeopcxijskmhtbaoipvutkex")
_HAS_LOOKALIKE = re.compile(f"[{_LOOKALIKE_FROM}]")
_SEPARATOR = "\n\x00\n"
# whitespace that NFKC leaves non-ASCII (it folds U+00A0, U+2000-U+200A, U+3000 to a space itself)
_OTHER_SPACE = re.compile("[\x85\u1680\u2028\u2029]")
_DROPPED = frozenset({"Mn", "Me", "Cf"})  # combining marks, format characters (zero-width, invisible)

# The guard's work budget, in units of about one character of text handled: every character scanned
# costs 1, every non-ASCII character projected 2 more (see _projection), every character NFKD makes for
# custom patterns 2, every pattern candidate (an occurrence of an anchor word) and every message walked
# 64 (a Python step each; a repeated field or map pays for all its messages before the first is walked),
# every string 8. A request may spend WORK_PER_BYTE units per byte of ``guard.max_request_bytes``; past
# that it is refused with PayloadTooCostly before more work is done.
# Measured by ``benchmarks/guard.py``: the worst 1 MiB request of each kind stays under 100 ms.
WORK_PER_BYTE = 4
_CANDIDATE_COST = 64
_MESSAGE_COST = 64
_STRING_COST = 8
_FOLD_COST = 2
_CHUNK = 4096  # characters normalised at a time for custom patterns: U+FDFA makes 18 of one


class _Budget:
    __slots__ = ("left",)

    def __init__(self, units: int) -> None:
        self.left = units

    def spend(self, units: int) -> None:
        self.left -= units
        if self.left < 0:
            raise PayloadTooCostly("request is too costly to inspect: the payload guard's work budget is "
                                   "exhausted (text that Unicode folding expands many times, or too many "
                                   "messages or pattern candidates)")


@functools.cache
def _projection() -> dict[int, str]:
    """What the default patterns see of a non-ASCII character: its fold (below) lowercased, with
    whitespace as " " and every other non-ASCII character as "?" (a run as one: no pattern tells "?"
    from "??"). Only the characters whose projection is not "?" are kept (~8k); ``str.translate`` leaves
    the rest, which the ASCII encoding then turns into "?". Built once (~100 ms).

    The fold of a text is the fold of each character in turn: NFKC recomposes only what the dropped
    combining marks or non-ASCII characters take part in, and nothing composes into ASCII."""
    look = set(_LOOKALIKE_FROM)
    table: dict[int, str] = {}
    for block in (range(0x80, 0x30000), range(0xE0000, 0xE1000)):  # nothing folds beyond these
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


_QUESTION_MARKS = re.compile(r"\?{2,}")


def _project(text: str, budget: _Budget) -> str:
    """The lowercased ASCII projection of non-ASCII ``text`` (see :func:`_projection`), paid for."""
    budget.spend(_FOLD_COST * len(text))
    return text.translate(_projection()).encode("ascii", "replace").lower().decode("ascii")


@functools.cache
def _mark_tables() -> tuple[re.Pattern[str], dict[int, None]]:
    """Combining marks and format characters: a character class of those in the BMP (which ``re``
    tests in constant time) and a translate table of the few beyond it. Built once (~50 ms)."""
    bmp: list[tuple[int, int]] = []
    astral: dict[int, None] = {}
    for block in (range(0x80, 0x30000), range(0xE0000, 0xE1000)):  # no marks elsewhere
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


def _fold(text: str, budget: _Budget) -> str:
    """Non-ASCII text as the patterns should see it: compatibility forms folded (fullwidth, ligatures),
    combining marks and invisible format characters dropped, Latin look-alikes mapped to Latin.

    Linear with a small constant: normalised in chunks, each paid for before the next, so an input that
    expands many times (U+FDFA: 18 characters) exhausts the budget after a bounded amount of work."""
    parts = []
    for i in range(0, len(text), _CHUNK):
        part = unicodedata.normalize("NFKD", text[i:i + _CHUNK])
        budget.spend(_FOLD_COST * len(part))
        parts.append(part)
    marks, astral = _mark_tables()
    kept = marks.sub("", "".join(parts))
    if astral and max(kept, default="\0") > "\uffff":
        kept = kept.translate(astral)
    folded = unicodedata.normalize("NFKC", kept)
    return folded.translate(_CONFUSABLES) if _HAS_LOOKALIKE.search(folded) else folded


@dataclass(frozen=True, slots=True)
class _Rule:
    """Where a default pattern can match: at each occurrence of ``anchor`` (a literal), ``forward`` must
    match from the anchor on and ``backward`` (if any) must match the text before it, read backwards.
    ``run``: the anchor is a run of this character, tried once per run (at its start, or for "<<" at
    its last two characters), so a long run is one candidate, not many."""

    anchor: str
    forward: re.Pattern[str]
    backward: re.Pattern[str] | None = None
    run: str | None = None


def _rules(forward: str, anchors: tuple[str, ...]) -> tuple[_Rule, ...]:
    rx = re.compile(forward)
    return tuple(_Rule(a, rx) for a in anchors)


_JAILBREAK_AFTER_NOW = r"now\s+(?:dan\b|in\s+developer\s+mode|an?\s+unrestricted|jailbroken|unfiltered)"
#: pattern name -> the anchored rules that together match exactly what its regex matches
_RULES: dict[str, tuple[_Rule, ...]] = {
    "ignore-previous-instructions": _rules(
        rf"(?<!\w){_VERB_FORGET}\s+{_ANY}(?:previous|prior|above|earlier|preceding|original)\s+"
        r"(?:instructions?|directions?|prompts?|rules|messages|context)", _FORGET),
    "disregard-system-prompt": _rules(rf"(?<!\w){_VERB_FORGET}\s+{_ANY}system\s+(?:prompt|message|instructions?)",
                                      _FORGET),
    "jailbreak-persona": (
        _Rule("now", re.compile(_JAILBREAK_AFTER_NOW), re.compile(r"\s+era\s+uoy(?!\w)")),  # you are now ...
        _Rule("now", re.compile(r"now\b"), re.compile(r"\s+gnihtyna\s+od(?!\w)")),  # do anything now
        _Rule("developer", re.compile(r"(?<!\w)developer\s+mode\s+enabled\b")),
    ),
    "reveal-system-prompt": _rules(
        rf"(?<!\w){_VERB_SHOW}\s+(?:me\s+)?{_ANY}(?:system\s+prompt|hidden\s+instructions|initial\s+instructions"
        r"|original\s+instructions|system\s+message)", _SHOW),
    "secret-exfiltration": _rules(
        rf"(?<!\w){_VERB_SHOW}\s+(?:me\s+)?{_ANY}(?:api\s+|secret\s+|private\s+|access\s+)?"
        r"(?:keys?|secrets?|credentials|passwords?|tokens)\b", _SHOW),
    "role-injection-marker": (
        *_rules(r"(?<!\w)(?:begin|end)\s+(?:system|developer)\s+(?:prompt|message|instructions)\b", ("begin", "end")),
        _Rule("<|", re.compile(r"<\|\s*(?:im_start|im_end|system|endoftext)\s*\|>")),
        _Rule("[inst]", re.compile(r"\[inst\]")),
        _Rule("[/inst]", re.compile(r"\[/inst\]")),
        _Rule("<<", re.compile(r"<<\s*/?sys\s*>>"), run="<"),
        _Rule("##", re.compile(r"#{2,}[ \t]*(?:system|new[ \t]+instructions)[ \t]*:"),
              re.compile(r"[ \t]*(?:\n|\Z)"), run="#"),
    ),
}


class _Anchors:
    """The default patterns' rules by anchor, found in one regex pass: a flat alternation of the anchors
    (sre then skips every position whose character starts none of them), a run anchor as the run.
    Each occurrence is one candidate: the rules of its anchor are tried where the anchor is, in
    pattern order. Occurrences that overlap a found one are not found again; none can match but one:
    a word anchor inside another word is not at a word start, a run is one candidate, and the one anchor
    that can start inside a run ("<|" in "<<|") is tried at the run's last character."""

    def __init__(self, names: tuple[str, ...]) -> None:
        #: the occurrence's first two characters (the whole of a word) -> (pattern index, rule, where);
        #: where: 0 at the occurrence's start, -k at k characters before its end
        self.rules: dict[str, list[tuple[int, _Rule, int]]] = {}
        alternatives: list[str] = []
        for index, name in enumerate(names):
            for rule in _RULES[name]:
                key = rule.anchor[:2] if rule.run else rule.anchor
                if key not in self.rules:
                    self.rules[key] = []
                    alternatives.append(re.escape(rule.anchor) + (re.escape(rule.run) + "*" if rule.run else ""))
                self.rules[key].append((index, rule, -2 if rule.run == "<" else 0))
        for key, rules in list(self.rules.items()):  # "<|" at the end of a run of "<"
            if "<<" in self.rules and key.startswith("<") and key != "<<":
                self.rules["<<"].extend((index, rule, -1) for index, rule, _ in rules)
        for rules in self.rules.values():
            rules.sort(key=lambda r: r[0])
        self._alternatives = dict(zip(self.rules, alternatives, strict=True))
        self.regex = self._regex(tuple(self.rules)) if alternatives else None
        firsts = {key[0] for key in self.rules}
        self._not_first = bytes(b for b in range(256) if chr(b) not in firsts)

    @functools.lru_cache(maxsize=64)  # noqa: B019 (one instance per guard, few sets of anchors)
    def _regex(self, keys: tuple[str, ...]) -> re.Pattern[str]:
        return re.compile("|".join(self._alternatives[k] for k in keys))

    def _scanner(self, lower: str) -> re.Pattern[str] | None:
        """The regex to find candidates with. sre skips fast over characters that start no anchor but
        tries every anchor at each one that does; in text dense with such characters ("ffiffi...", the
        projection of U+33AF "rad?s2") one ``in`` per anchor first (~1 ms per MiB each) leaves a regex
        of the anchors present only (often none)."""
        if len(lower.encode("ascii").translate(None, self._not_first)) * 8 < len(lower):
            return self.regex
        present = tuple(k for k in self.rules if k in lower)
        return self._regex(present) if present else None

    def first_pattern(self, lower: str, budget: _Budget) -> int | None:
        """The index of the first pattern (in list order) that matches ``lower``, or None; every
        candidate paid for."""
        scanner = self._scanner(lower) if self.regex is not None else None
        if scanner is None:
            return None
        best: int | None = None
        reverse: str | None = None
        n = len(lower)
        for m in scanner.finditer(lower):
            budget.spend(_CANDIDATE_COST)
            found = m.group()
            for index, rule, where in self.rules[found[:2] if found[0] in "<#" else found]:
                if best is not None and index >= best:
                    break
                at = m.start() if where == 0 else m.end() + where
                if rule.forward.match(lower, at) is None:
                    continue
                if rule.backward is not None:
                    if reverse is None:
                        reverse = lower[::-1]
                    if rule.backward.match(reverse, n - at) is None:
                        continue
                best = index
                break
            if best == 0:
                return 0
        return best


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


class PayloadGuard:
    """Built once from :class:`GuardConfig`; :meth:`check` runs on every request."""

    def __init__(self, cfg: GuardConfig) -> None:
        self._cfg = cfg
        self._block = cfg.action == "block"
        self._units = WORK_PER_BYTE * cfg.max_request_bytes
        # (name, compiled regex), run case-insensitively on the text as sent (after normalisation).
        self._custom: list[tuple[str, re.Pattern[str]]] = []
        # the default patterns' names, in order, and their rules by anchor, run on the lowercased text
        self._defaults = tuple(p.name for p in DEFAULT_PATTERNS) if cfg.default_patterns else ()
        self._anchors = _Anchors(self._defaults)
        for i, rx in enumerate(cfg.patterns):
            try:
                self._custom.append((f"custom-{i}", re.compile(rx, re.IGNORECASE | re.MULTILINE)))
            except re.error as e:
                raise ConfigError(f"guard.patterns[{i}]: invalid regular expression {rx!r}: {e}") from None
        # built once, at start-up rather than on the first non-ASCII request
        if self._defaults:
            _projection()
        if self._custom:
            _mark_tables()

    def check(self, message: object) -> GuardResult:
        """Raises :class:`PayloadTooLarge` over the size limit; else names the first pattern found.

        Any request type is accepted (see the module docstring); a result whose ``unchecked`` is set
        passed without a full check, and its ``reason`` says why. Raises :class:`PayloadTooCostly`
        when checking it would exceed the work budget (see ``WORK_PER_BYTE``).
        """
        if isinstance(message, Message):
            self._check_size(message.ByteSize())
            if not self._defaults and not self._custom:
                return PASSED
            texts: list[str] = []
            budget = _Budget(self._units - _MESSAGE_COST)
            if not _collect(message, texts, 0, budget):
                return self._hit(TOO_DEEP)
            # One pass over all strings; the separator stops any match (\s, \b, ^) spanning two fields.
            name = self._match(_SEPARATOR.join(texts), budget)
            return PASSED if name is None else self._hit(name)
        if isinstance(message, str):
            self._check_size(len(message.encode("utf-8", "surrogatepass")))
            name = self.match(message)
            return PASSED if name is None else self._hit(name)
        if isinstance(message, _BYTES):
            return self._check_bytes(bytes(message))
        kind = type(message).__qualname__
        return GuardResult(False, False, None,
                           f"request of type {kind} is neither protobuf nor bytes: size and patterns not checked",
                           UNSUPPORTED)

    def _check_size(self, size: int) -> None:
        if size > self._cfg.max_request_bytes:
            raise PayloadTooLarge(
                f"request is {size} bytes, over the limit of {self._cfg.max_request_bytes} bytes"
            )

    def _check_bytes(self, data: bytes) -> GuardResult:
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
        name = self.match(text)
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
        return self._match(text, _Budget(self._units))

    def _match(self, text: str, budget: _Budget) -> str | None:
        if not text:
            return None
        ascii_ = text.isascii()
        if self._defaults:
            lower = text.lower() if ascii_ else _project(text, budget)
            budget.spend(len(lower))
            index = self._anchors.first_pattern(lower, budget)
            if index is not None:
                return self._defaults[index]
        if not self._custom:
            return None
        if ascii_:
            if not self._defaults:
                budget.spend(len(text))
        else:
            text = _fold(text, budget)
        return self._match_custom(text)

    def _match_custom(self, text: str) -> str | None:
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


# How a field is walked, cached per field descriptor.
_SKIP, _STRING, _STRINGS, _MESSAGE, _MESSAGES, _MAP = range(6)
_kinds: dict[FieldDescriptor, tuple[int, bool, int]] = {}  # fd -> (kind, map has str keys, map value kind)


def _kind(fd: FieldDescriptor) -> tuple[int, bool, int]:
    k = _kinds.get(fd)
    if k is None:
        k = (_SKIP, False, _SKIP)
        if fd.type == FieldDescriptor.TYPE_STRING:
            k = (_STRINGS if fd.is_repeated else _STRING, False, _SKIP)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            entry = fd.message_type
            if entry is not None and entry.GetOptions().map_entry:
                key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
                vkind = {FieldDescriptor.TYPE_STRING: _STRING, FieldDescriptor.TYPE_MESSAGE: _MESSAGE}
                k = (_MAP, key.type == FieldDescriptor.TYPE_STRING, vkind.get(value.type, _SKIP))
            else:
                k = (_MESSAGES if fd.is_repeated else _MESSAGE, False, _SKIP)
        _kinds[fd] = k
    return k


def _collect(message: Message, out: list[str], depth: int, budget: _Budget) -> bool:
    """Appends every set string of ``message`` (map keys too); False when nested over MAX_DEPTH.
    Every message walked and every string collected is paid for, a message by its parent, and all the
    messages of a repeated field or map before the first is walked (a huge Struct is refused at once)."""
    if depth > MAX_DEPTH:
        return False
    for fd, value in message.ListFields():
        kind, str_keys, vkind = _kind(fd)
        if kind == _STRING:
            budget.spend(_STRING_COST)
            out.append(value)
        elif kind == _STRINGS:
            budget.spend(_STRING_COST * len(value))
            out.extend(value)
        elif kind == _MESSAGE:
            budget.spend(_MESSAGE_COST)
            if not _collect(value, out, depth + 1, budget):
                return False
        elif kind == _MESSAGES:
            budget.spend(_MESSAGE_COST * len(value))
            for item in value:
                if not _collect(item, out, depth + 1, budget):
                    return False
        elif kind == _MAP:
            if str_keys:
                budget.spend(_STRING_COST * len(value))
                out.extend(value)
            if vkind == _STRING:
                budget.spend(_STRING_COST * len(value))
                out.extend(value.values())
            elif vkind == _MESSAGE:
                budget.spend(_MESSAGE_COST * len(value))
                for item in value.values():
                    if not _collect(item, out, depth + 1, budget):
                        return False
    return True
