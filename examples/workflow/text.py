"""Deterministic text helpers shared by the workflow agents (no network model)."""

from __future__ import annotations

import re
from collections import Counter

STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both but
by can could did do does doing down during each few for from further had has have having he her here hers herself
him himself his how i if in into is it its itself just me more most my myself no nor not now of off on once only or
other our ours ourselves out over own same she should so some such than that the their theirs them themselves then
there these they this those through to too under until up very was we were what when where which while who whom why
will with would you your yours yourself yourselves also may might must shall us via per many much one two three
""".split())

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'-]+")


def sentences(text: str) -> list[str]:
    flat = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return [s.strip() for s in _SENTENCE.split(flat) if s.strip()]


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in STOPWORDS and len(w) > 2]


def key_terms(text: str, k: int = 8) -> list[str]:
    """The ``k`` most frequent content words (ties broken alphabetically, so the result is stable)."""
    counts = Counter(content_words(text))
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def split_sections(document: str) -> list[tuple[str, str]]:
    """Markdown headings start sections; plain text is split on blank-line paragraphs."""
    lines = document.splitlines()
    if any(line.lstrip().startswith("#") for line in lines):
        sections: list[tuple[str, list[str]]] = []
        title, body = "", []
        for line in lines:
            if line.lstrip().startswith("#"):
                if body or title:
                    sections.append((title, body))
                title, body = line.lstrip("# ").strip(), []
            else:
                body.append(line)
        sections.append((title, body))
        return [(t, "\n".join(b).strip()) for t, b in sections if "\n".join(b).strip()]
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", document) if p.strip()]
    return [(f"part {i + 1}", p) for i, p in enumerate(paragraphs)]
