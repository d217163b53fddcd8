"""Parsing of the unit strings used in config and on the command line: durations, sizes, rates."""

from __future__ import annotations

import re

from agentmesh.errors import ConfigError

__all__ = ["parse_duration", "parse_rate", "parse_size"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 10**6, "MiB": 1024**2, "GB": 10**9, "GiB": 1024**3}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(ms|s|m|h|d|sec|second|min|minute|hour|day)\s*$")
_RATE_UNITS = {"sec": "s", "second": "s", "min": "m", "minute": "m", "hour": "h", "day": "d"}


def parse_duration(value: str | int | float, *, what: str = "duration") -> float:
    """``"24h"``, ``"15m"``, ``"30s"``, ``"500ms"``, ``"2d"`` or a number of seconds -> seconds (> 0)."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a duration like 30s, 15m or 24h, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ConfigError(f"{what}: expected a duration like 30s, 15m or 24h, got {value!r}")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds < 0:
        raise ConfigError(f"{what}: must not be negative, got {value!r}")
    return seconds


def parse_size(value: str | int, *, what: str = "size") -> int:
    """``"1MiB"``, ``"64KiB"``, ``"1000"`` or an int -> bytes (> 0)."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a size like 64KiB or 1MiB, got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ConfigError(f"{what}: expected a size like 64KiB or 1MiB, got {value!r}")
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    if size <= 0:
        raise ConfigError(f"{what}: must be positive, got {value!r}")
    return size


def parse_rate(value: str | int | float, *, what: str = "rate") -> float:
    """``"10/s"``, ``"100/m"``, ``"5/h"`` or a number per second -> tokens per second (> 0)."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a rate like 10/s or 100/m, got {value!r}")
    if isinstance(value, int | float):
        rate = float(value)
    else:
        m = _RATE.match(str(value))
        if not m:
            raise ConfigError(f"{what}: expected a rate like 10/s or 100/m, got {value!r}")
        unit = _RATE_UNITS.get(m.group(2), m.group(2))
        rate = float(m.group(1)) / _DURATION_UNITS[unit]
    if rate <= 0:
        raise ConfigError(f"{what}: must be positive, got {value!r}")
    return rate
