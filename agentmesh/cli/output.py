"""``-o table|json|yaml`` for every command that lists or shows something; the table is the default.

JSON and YAML carry the same plain data (objects, lists, strings, numbers, booleans, null; times as
UTC ISO 8601 strings such as ``2026-11-30T14:19:23Z``) and are the stable interface for scripts. The
table is for people and may change. Streams (``audit tail -o json``) are one JSON object per line, or
one YAML document per record.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import yaml

__all__ = ["FORMATS", "add_output", "emit", "emit_record", "plain", "relative", "table", "utc"]

FORMATS = ("table", "json", "yaml")


def add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=FORMATS, default="table", metavar="FORMAT",
                   help="table (default), json or yaml")


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as left-aligned columns two spaces apart (the first row is usually the header)."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def emit(fmt: str, data: Any, lines: Callable[[], Iterable[str]], out: TextIO | None = None) -> None:
    """Writes ``data`` as JSON or YAML, or for ``table`` the text ``lines()`` makes."""
    out = out or sys.stdout
    if fmt == "json":
        out.write(json.dumps(plain(data), indent=2, ensure_ascii=False) + "\n")
    elif fmt == "yaml":
        out.write(yaml.safe_dump(plain(data), sort_keys=False, allow_unicode=True))
    else:
        for line in lines():
            out.write(line + "\n")


def emit_record(fmt: str, data: Any, line: str, out: TextIO) -> None:
    """One record of a stream: a JSON line, a YAML document, or ``line``."""
    if fmt == "json":
        out.write(json.dumps(plain(data), ensure_ascii=False, separators=(",", ":")) + "\n")
    elif fmt == "yaml":
        out.write(yaml.safe_dump(plain(data), sort_keys=False, allow_unicode=True, explicit_start=True))
    else:
        out.write(line + "\n")


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data: mappings, dataclasses, tuples and sets become dicts and lists,
    datetimes UTC strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


def utc(ts: float) -> str:
    """A Unix time as ``2026-11-30T14:19:23Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def relative(ts: float, now: float) -> str:
    """``in 14m 59s`` or ``3m 2s ago``: whole seconds, the two largest units."""
    delta = round(ts - now)
    if delta == 0:
        return "now"
    n = abs(delta)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if n >= size or (unit == "s" and not parts):
            parts.append(f"{n // size}{unit}")
            n %= size
    text = " ".join(parts[:2])
    return f"in {text}" if delta > 0 else f"{text} ago"
