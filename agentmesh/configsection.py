"""One mapping of the mesh file being read: typed getters that name the key in every error.

:class:`Section` remembers its dotted path (``agents.ingestor``) and the keys read from it; ``done()``
refuses a key nobody read (an unknown key, with the nearest valid one), and a required key that is
missing is first looked for among the unread keys (``misspelt``), so a typo is named as one.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from agentmesh.config import did_you_mean
from agentmesh.errors import ConfigError
from agentmesh.units import parse_duration, parse_size

__all__ = ["Section"]


class Section:
    """A mapping being read, that remembers its dotted path and refuses unknown keys."""

    def __init__(self, raw: object, path: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(raw).__name__}")
        self.raw: dict[str, Any] = raw
        self.path = path
        self.seen: set[str] = set()

    def key(self, k: str) -> str:
        return f"{self.path}.{k}" if self.path else k

    def get(self, k: str, default: Any = None) -> Any:
        """The value of ``k``; ``default`` when it is absent or written empty (``key:`` / ``key: null``)."""
        self.seen.add(k)
        v = self.raw.get(k)
        return default if v is None else v

    def has(self, k: str) -> bool:
        return k in self.raw

    def text(self, k: str, default: str | None = None, *, required: bool = False) -> Any:
        v = self.get(k, default)
        if v is None:
            if required:
                self.misspelt(k)
                raise ConfigError(f"{self.key(k)}: required")
            return None
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"{self.key(k)}: expected a non-empty string, got {v!r}")
        return v

    def flag(self, k: str, default: bool) -> bool:
        v = self.get(k, default)
        if not isinstance(v, bool):
            raise ConfigError(f"{self.key(k)}: expected true or false, got {v!r}")
        return v

    def integer(self, k: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
        v = self.get(k, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum or (maximum is not None and v > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            raise ConfigError(f"{self.key(k)}: expected an integer {bound}, got {v!r}")
        return v

    def strs(self, k: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        v = self.get(k)
        if v is None:
            return default
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise ConfigError(f"{self.key(k)}: expected a list of strings, got {v!r}")
        return tuple(v)

    def duration(self, k: str, default: float) -> float:
        v = self.get(k)
        return default if v is None else parse_duration(v, what=self.key(k))

    def size(self, k: str, default: int) -> int:
        v = self.get(k)
        return default if v is None else parse_size(v, what=self.key(k))

    def path_(self, k: str, base: Path, default: Path | None = None) -> Path | None:
        v = self.text(k)
        if v is None:
            return default
        p = Path(v).expanduser()
        return p if p.is_absolute() else (base / p)

    def section(self, k: str) -> Section:
        return Section(self.get(k), self.key(k))

    def choice(self, k: str, options: tuple[str, ...], default: str) -> str:
        v = self.get(k, default)
        if v not in options:
            raise ConfigError(f"{self.key(k)}: expected one of {', '.join(options)}, got {v!r}")
        return str(v)

    def misspelt(self, k: str) -> None:
        """Before "``k``: required": a key not read yet that looks like ``k`` is its misspelling."""
        unread = [str(r) for r in self.raw if r not in self.seen]
        near = difflib.get_close_matches(k, unread, n=1)
        if near:
            raise ConfigError(f"{self.key(near[0])}: unknown key (did you mean {k!r}?)")

    def done(self) -> None:
        unknown = sorted(str(k) for k in set(self.raw) - self.seen)
        if unknown:
            k = unknown[0]
            shown = k if k.isprintable() else repr(k)  # one line, whatever the key holds
            raise ConfigError(f"{self.key(shown)}: unknown key{did_you_mean(k, self.seen)}")
