"""Token revocation by ``jti``: an append-only file beside the CA, and the live set a verifier asks."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from agentmesh.clock import Clock
from agentmesh.errors import ConfigError, PKIError

__all__ = ["REVOKED_FILE", "RevocationStore", "RevokedSet"]

REVOKED_FILE = "revoked-tokens.jsonl"


class RevocationStore:
    """``<ca_dir>/revoked-tokens.jsonl``: one ``{"jti": ..., "exp": ...}`` line per revocation.

    ``exp`` is the token's expiry (null: keep forever); entries are dropped from :meth:`load`
    once the token could no longer verify anyway.
    """

    def __init__(self, ca_dir: str | Path, *, clock: Clock = time.time) -> None:
        self.path = Path(ca_dir) / REVOKED_FILE
        self.clock = clock

    def revoke(self, jti: str, exp: float | None) -> None:
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise ConfigError("a token id (jti) must be a non-empty string of at most 256 characters")
        line = (json.dumps({"jti": jti, "exp": exp}, sort_keys=True) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as e:
            raise PKIError(f"cannot write {self.path} ({e.__class__.__name__})") from None
        try:
            os.fchmod(fd, 0o600)  # also tightens a file that existed with wider permissions
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
        finally:
            os.close(fd)  # closing releases the lock

    def load(self, *, grace: float = 3600.0) -> frozenset[str]:
        """The jtis still worth refusing: unexpired (plus ``grace`` for clock leeway) or kept forever."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return frozenset()
        except OSError as e:
            raise PKIError(f"cannot read {self.path} ({e.__class__.__name__})") from None
        cutoff = self.clock() - grace
        out: set[str] = set()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                jti, exp = entry["jti"], entry["exp"]
                if not isinstance(jti, str) or not (exp is None or isinstance(exp, int | float)):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                raise PKIError(f"{self.path} line {n} is damaged; fix or remove it") from None
            if exp is None or exp >= cutoff:
                out.add(jti)
        return frozenset(out)


class RevokedSet:
    """A thread-safe set of revoked jtis; call it with a jti (it is a verifier's ``revoked``)."""

    def __init__(self, jtis: Iterable[str] = ()) -> None:
        self._jtis: frozenset[str] = frozenset(jtis)
        self._lock = threading.Lock()

    def update(self, jtis: Iterable[str]) -> None:
        """Replaces the whole set with a fresh list (e.g. from the control plane)."""
        new = frozenset(jtis)
        with self._lock:
            self._jtis = new

    def add(self, jti: str) -> None:
        with self._lock:
            self._jtis = self._jtis | {jti}

    def __call__(self, jti: str) -> bool:
        return jti in self._jtis

    def __contains__(self, jti: object) -> bool:
        return jti in self._jtis

    def __len__(self) -> int:
        return len(self._jtis)
