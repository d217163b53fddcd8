"""Scraping a member's metrics endpoint over real HTTP, and waiting (bounded) for a series to show a call."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def samples(text: str) -> list[Sample]:
    return [Sample(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels``."""
    return sum(s.value for s in samples(text) if s.name == name and labels.items() <= s.labels.items())


async def scrape_until(url: str, holds: Callable[[str], bool], timeout: float = 5.0) -> str:
    """The endpoint's text once ``holds(text)``: a server records a call when its span ends, just after
    the status was sent, so its client may look before that."""
    until = time.monotonic() + timeout
    while True:
        text = await asyncio.to_thread(fetch, url)
        if holds(text) or time.monotonic() > until:
            return text
        await asyncio.sleep(0.05)
