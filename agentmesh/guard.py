"""The payload guard: a size limit and prompt-injection patterns over every string of a request.

Pure: it takes a request and returns a :class:`GuardResult`. For a protobuf message it walks all set
string fields recursively (nested messages, repeated fields, map keys and values, and so the contents of
``google.protobuf.Struct``/``Value``/``ListValue``) down to :data:`MAX_DEPTH` levels; a message
nested deeper counts as a match of the pattern ``nesting-too-deep``, so depth cannot hide text.
Results name the pattern, never the matched text. Non-ASCII text is folded before matching
(compatibility forms, combining marks and invisible characters removed, common Cyrillic/Greek
look-alikes mapped to Latin). Every pattern runs in time linear in the text.

Other request types (a raw-bytes handler, whose request deserializer is None, or a custom codec) never
crash it: ``bytes``/``bytearray``/``memoryview`` are checked by their length, and the patterns run over
their text (UTF-8; bytes that are not UTF-8 are matched over their decodable text only, and the result
says so: ``unchecked="not-utf8"``); ``str`` is checked as its UTF-8 encoding; anything else passes
unchecked with ``unchecked="unsupported-type"`` and a reason, for the caller to record.

The guard is a tripwire, not a proof: encodings (base64, leetspeak), other languages and phrasing
the patterns do not know get through. Agents must still treat payloads as untrusted data.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from agentmesh.config import GuardConfig
from agentmesh.errors import ConfigError, PayloadBlocked, PayloadTooLarge

__all__ = ["DEFAULT_PATTERNS", "MAX_DEPTH", "NOT_UTF8", "UNSUPPORTED", "GuardResult", "PayloadGuard",
           "raise_if_blocked"]

MAX_DEPTH = 64
TOO_DEEP = "nesting-too-deep"

_ANY = r"(?:all\s+|any\s+|the\s+|your\s+|of\s+|my\s+|these\s+|those\s+)*"
_FORGET = ("ignore", "disregard", "forget", "override", "bypass", "skip")
_SHOW = ("reveal", "print", "show", "output", "repeat", "leak", "display", "dump", "expose", "tell",
         "give", "send")
_VERB_FORGET = "(?:" + "|".join(_FORGET) + ")"
_VERB_SHOW = r"(?:reveal|print|show|output|repeat|leak|display|dump|expose|tell\s+me|give\s+me|send\s+me)"


@dataclass(frozen=True, slots=True)
class _Pattern:
    name: str  # what results and errors carry
    regex: str  # lowercase: matched against the lowercased text, which is faster than re.IGNORECASE
    hints: tuple[str, ...]  # lowercase words, one of which any match contains (a cheap prefilter)


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
        ("begin", "end", "<|", "inst]", "sys", "##"),
    ),
)

# Latin look-alikes from Cyrillic and Greek that survive NFKC (a small, common subset of Unicode's
# confusables), mapped to the Latin letter they imitate.
_CONFUSABLES = str.maketrans(
    "аеорсухіјѕԁһӏԛѵԝаАЕОРСХІЈЅКМНТВαοιρνυτκεχ",
    "aeopcyxijsdhlqvwaaeopcxijskmhtbaoipvutkex",
)
_SEPARATOR = "\n\x00\n"
_DROPPED = frozenset({"Mn", "Me", "Cf"})  # combining marks, format characters (zero-width, invisible)


def _fold(text: str) -> str:
    """Non-ASCII text as the patterns should see it: compatibility forms folded (fullwidth, ligatures),
    combining marks and invisible format characters dropped, Latin look-alikes mapped to Latin."""
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(ch for ch in decomposed if unicodedata.category(ch) not in _DROPPED)
    return unicodedata.normalize("NFKC", kept).translate(_CONFUSABLES)


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
        # (name, compiled lowercase regex, prefilter hints), run on the lowercased text.
        patterns: list[tuple[str, re.Pattern[str], tuple[str, ...]]] = []
        # (name, compiled regex), run case-insensitively on the text as sent (after normalisation).
        self._custom: list[tuple[str, re.Pattern[str]]] = []
        if cfg.default_patterns:
            patterns += [(p.name, re.compile(p.regex, re.MULTILINE), p.hints) for p in DEFAULT_PATTERNS]
        for i, rx in enumerate(cfg.patterns):
            try:
                self._custom.append((f"custom-{i}", re.compile(rx, re.IGNORECASE | re.MULTILINE)))
            except re.error as e:
                raise ConfigError(f"guard.patterns[{i}]: invalid regular expression {rx!r}: {e}") from None
        self._defaults = tuple(patterns)
        # one search for any hint first: benign text (the common case) skips the per-pattern loop
        hints = sorted({h for _, _, hs in patterns for h in hs})
        self._any_hint = re.compile("|".join(re.escape(h) for h in hints)) if hints else None

    def check(self, message: object) -> GuardResult:
        """Raises :class:`PayloadTooLarge` over the size limit; else names the first pattern found.

        Any request type is accepted (see the module docstring); a result whose ``unchecked`` is set
        passed without a full check, and its ``reason`` says why.
        """
        if isinstance(message, Message):
            self._check_size(message.ByteSize())
            if not self._defaults and not self._custom:
                return PASSED
            texts: list[str] = []
            if not _collect(message, texts, 0):
                return self._hit(TOO_DEEP)
            # One pass over all strings; the separator stops any match (\s, \b, ^) spanning two fields.
            name = self.match(_SEPARATOR.join(texts))
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
        """The name of the first pattern found in ``text``, or None."""
        if not text:
            return None
        if not text.isascii():
            text = _fold(text)
        if self._defaults:
            lower = text.lower()
            if self._any_hint is not None and self._any_hint.search(lower) is None:
                return self._match_custom(text)
            for name, rx, hints in self._defaults:
                if any(h in lower for h in hints) and rx.search(lower) is not None:
                    return name
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


def _collect(message: Message, out: list[str], depth: int) -> bool:
    """Appends every set string of ``message`` (map keys too); False when nested over MAX_DEPTH."""
    if depth > MAX_DEPTH:
        return False
    for fd, value in message.ListFields():
        kind, str_keys, vkind = _kind(fd)
        if kind == _STRING:
            out.append(value)
        elif kind == _STRINGS:
            out.extend(value)
        elif kind == _MESSAGE:
            if not _collect(value, out, depth + 1):
                return False
        elif kind == _MESSAGES:
            for item in value:
                if not _collect(item, out, depth + 1):
                    return False
        elif kind == _MAP:
            if str_keys:
                out.extend(value)
            if vkind == _STRING:
                out.extend(value.values())
            elif vkind == _MESSAGE:
                for item in value.values():
                    if not _collect(item, out, depth + 1):
                        return False
    return True
