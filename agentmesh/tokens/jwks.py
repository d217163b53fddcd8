"""Keys of an external issuer fetched from a JWKS URL: fetched off the hot path, served from memory."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import ipaddress
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from agentmesh.clock import Clock
from agentmesh.errors import ConfigError, MeshError, Unavailable
from agentmesh.tokens.keys import KeySet, VerificationKey, parse_jwks

__all__ = ["JwksCache", "refresh_forever"]

log = logging.getLogger(__name__)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A JWKS is fetched from exactly the configured URL; a redirect is an error."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return url
    raise ConfigError(f"JWKS URL {url!r} must use https (plain http only for loopback)")


class JwksCache:
    """The signing keys of ``issuer`` at ``url``, refreshed every ``ttl`` seconds.

    :meth:`get` never does I/O; :meth:`refresh` (or the :meth:`start` thread) fetches. A failed
    fetch keeps the last good keys.
    """

    def __init__(self, url: str, issuer: str, *, ttl: float = 300.0, timeout: float = 5.0,
                 max_bytes: int = 256 * 1024, clock: Clock = time.time) -> None:
        self.url = _check_url(url)
        self.issuer = issuer
        self.ttl = ttl
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.clock = clock
        self.fetched_at: float | None = None
        self._keys: dict[str, VerificationKey] = {}
        self._lock = threading.Lock()
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ hot path (no I/O)
    def get(self, issuer: str, kid: str) -> VerificationKey | None:
        return self._keys.get(kid) if issuer == self.issuer else None

    @property
    def keyset(self) -> KeySet:
        """A :class:`KeySet` that reads this cache's current keys."""
        return KeySet.from_source(self.issuer, self)

    @property
    def stale(self) -> bool:
        return self.fetched_at is None or self.clock() - self.fetched_at >= self.ttl

    # ------------------------------------------------------------------ fetching
    def refresh(self) -> int:
        """Fetches the JWKS now; returns the number of keys. Unavailable / ConfigError on failure."""
        doc = self._fetch()
        keys = {k.kid: k for k in parse_jwks(doc, self.issuer)}
        with self._lock:
            self._keys = keys
            self.fetched_at = self.clock()
        return len(keys)

    def refresh_if_stale(self) -> bool:
        if not self.stale:
            return False
        self.refresh()
        return True

    def _fetch(self) -> dict[str, Any]:
        req = urllib.request.Request(self.url, headers={"Accept": "application/json"})  # noqa: S310 (checked)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                body = resp.read(self.max_bytes + 1)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            reason = getattr(e, "code", None) or e.__class__.__name__
            raise Unavailable(f"cannot fetch the JWKS of {self.issuer!r} from {self.url} ({reason})") from None
        if len(body) > self.max_bytes:
            raise ConfigError(f"the JWKS at {self.url} is larger than {self.max_bytes} bytes")
        try:
            doc = json.loads(body)
        except ValueError:
            raise ConfigError(f"the JWKS at {self.url} is not valid JSON") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"the JWKS at {self.url} is not a JSON object")
        return doc

    # ------------------------------------------------------------------ background refresh
    def start(self, *, interval: float | None = None) -> threading.Thread:
        """Refreshes in a daemon thread every ``interval`` (default: min(ttl, 60s))."""
        if self._thread is not None:
            return self._thread
        period = interval if interval is not None else min(self.ttl, 60.0)
        self._stop.clear()

        def loop() -> None:
            while True:
                try:
                    self.refresh_if_stale()
                except MeshError as e:
                    log.warning("%s", e.message)
                except Exception:  # keep refreshing; the last good keys stay in use
                    log.exception("unexpected error refreshing the JWKS of %s", self.issuer)
                if self._stop.wait(period):
                    return

        self._thread = threading.Thread(target=loop, name=f"jwks-{self.issuer}", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1)
            self._thread = None


async def refresh_forever(caches: Sequence[JwksCache], every: float) -> None:
    """Keeps the key sets of issuers published at a URL fresh, off the event loop; a failed fetch keeps
    the cached keys (the next round tries again)."""
    while True:
        await asyncio.sleep(every)
        for cache in caches:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(cache.refresh_if_stale)
