"""The bridge's HTTPS certificate, reloaded from disk without a restart.

uvicorn builds one ``SSLContext`` at start; after ``cert.pem``/``key.pem`` are renewed it would keep
presenting the old certificate until restarted. :class:`CertificateReloader` owns the context handed
to uvicorn and sets its ``sni_callback``, which OpenSSL runs on every ClientHello (with or without
SNI, before the certificate is chosen). When the files changed on disk (stat at most every
``check_every`` seconds of an injectable monotonic clock) the callback builds a context from them
and points the connection at it (``ssl_object.context = fresh``); later connections get it too. A
pair that does not load together (a key written before its certificate, a truncated file) keeps the
last good context, with one warning that names the files and OpenSSL's reason, never their content.
Renewal (:func:`agentmesh.pki.write_identity`) writes ``key.pem`` first, then replaces ``cert.pem``
atomically with ``os.replace``: the change of ``cert.pem`` completes the pair and triggers a retry.

How it is wired into uvicorn: ``uvicorn.Config(ssl_context_factory=ReloadingContextFactory())``
(uvicorn >= 0.47). uvicorn calls the factory in ``Config.load()`` in the process that serves: the
server process with one worker, and each worker process with ``workers > 1`` (the config, and so
this settings-only factory, is pickled to every spawned worker), so every worker owns its reloader.
The factory gets uvicorn's own default factory, which builds a context from ``ssl_certfile`` and
``ssl_keyfile`` with uvicorn's settings (protocol, ciphers, the HTTP protocol's ALPN list); every
rebuild calls that same function, so a reloaded context differs only in the files it read. The
alternatives need more of uvicorn's insides: replacing ``config.ssl`` after ``config.load()``
works for one worker only (each worker loads its config itself), and a ``Server`` subclass would
have to re-implement ``uvicorn.run``'s worker supervisor.
"""

from __future__ import annotations

import inspect
import logging
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CertificateReloader", "ReloadingContextFactory", "uvicorn_reloads"]

log = logging.getLogger("agentmesh.bridge")

#: what identifies one version of a file: replaced (inode), rewritten in place (mtime, size)
_Stamp = tuple[int, int, int, int]


def _stamps(*paths: Path) -> tuple[_Stamp, ...]:
    out = []
    for path in paths:
        st = os.stat(path)
        out.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


class CertificateReloader:
    """The server ``SSLContext`` (:attr:`context`) that presents the current ``cert``/``key`` pair.

    ``build`` makes a context from the files (raising ``ssl.SSLError``/``OSError`` when they do not
    load together); the first build happens here and its errors propagate: the bridge does not start
    with a broken pair. Single-threaded: the callback runs in the event loop of one worker.
    """

    def __init__(self, cert: Path, key: Path, build: Callable[[], ssl.SSLContext], *, check_every: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cert, self.key = cert, key
        self.check_every = check_every
        self.clock = clock
        self._build = build
        self._seen = _stamps(cert, key)  # before reading: a change during the build is seen next time
        self.context = build()
        self.context.sni_callback = self._on_hello
        self.current = self.context  # what new connections get
        self.reloads = 0
        self._next_check = clock() + check_every
        self._unreadable = False

    def refresh(self) -> ssl.SSLContext:
        """The context for a new connection, rebuilt first if the files changed since they were last read."""
        now = self.clock()
        if now < self._next_check:
            return self.current
        self._next_check = now + self.check_every
        try:
            seen = _stamps(self.cert, self.key)
        except OSError as e:
            if not self._unreadable:
                log.warning("bridge HTTPS: cannot stat %s (%s); still serving the previous certificate",
                            e.filename, e.strerror)
            self._unreadable = True
            return self.current
        self._unreadable = False
        if seen == self._seen:
            return self.current
        self._seen = seen  # tried once per version of the pair: one warning, not one per connection
        try:
            fresh = self._build()
        except (ssl.SSLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or type(e).__name__
            log.warning("bridge HTTPS: %s and %s do not load together (%s; a renewal in progress?); "
                        "still serving the previous certificate", self.cert, self.key, reason)
            return self.current
        self.current = fresh
        self.reloads += 1
        log.info("bridge HTTPS: reloaded the certificate from %s", self.cert)
        return fresh

    def _on_hello(self, ssl_object: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        try:
            fresh = self.refresh()
            if fresh is not context:
                ssl_object.context = fresh
        except Exception as e:  # an exception here would abort the handshake: serve the old certificate
            log.warning("bridge HTTPS: certificate reload failed (%s); still serving the previous certificate",
                        type(e).__name__)


class ReloadingContextFactory:
    """uvicorn's ``ssl_context_factory``: a :class:`CertificateReloader` over ``ssl_certfile`` and
    ``ssl_keyfile`` in each process that serves. Holds settings only until called, so it pickles
    to uvicorn's worker processes; :attr:`reloader` is the one built in this process."""

    def __init__(self, *, check_every: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.check_every = check_every
        self.clock = clock
        self.reloader: CertificateReloader | None = None

    def __call__(self, config: Any, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        cert = Path(config.ssl_certfile)
        key = Path(config.ssl_keyfile) if config.ssl_keyfile else cert
        self.reloader = CertificateReloader(cert, key, default_factory, check_every=self.check_every,
                                            clock=self.clock)
        return self.reloader.context

    def __getstate__(self) -> dict[str, Any]:
        return {"check_every": self.check_every, "clock": self.clock, "reloader": None}


def uvicorn_reloads() -> bool:
    """Whether the installed uvicorn takes an ``ssl_context_factory`` (0.47 and later)."""
    import uvicorn

    return "ssl_context_factory" in inspect.signature(uvicorn.Config).parameters
