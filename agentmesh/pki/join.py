"""One-time join tokens: how an operator lets a new member ask the CA for its first certificate.

``agentmesh cert join-token NAME`` makes ``amjoin1.<id>.<secret>``; the member presents it once, with a
CSR for the key it was born with. The CA keeps only ``sha256(secret)``, in ``<ca>/join-tokens.jsonl``
(0600, append-only, flock)::

    {"op": "create", "id": ..., "name": ..., "dns": [...], "exp": ..., "sha256": ...}
    {"op": "use", "id": ..., "at": ...}
    {"op": "void", "name": ..., "at": ...}     every unused token of that member (the kill switch)

The decision (:func:`decide`) is pure: the folded file, the presented token, a clock reading and the
blocked names in; a :class:`JoinGrant` or a :class:`JoinRefused` out. Messages never carry the token.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agentmesh.errors import PKIError
from agentmesh.identity import validate_agent_name
from agentmesh.pki.certs import validate_extra_dns_names

__all__ = ["MAX_TTL", "TOKEN_PREFIX", "JoinGrant", "JoinRefused", "JoinTokens", "TokenRecord", "decide", "fold",
           "parse_token"]

TOKEN_PREFIX = "amjoin1"  # noqa: S105 (a format tag, not a secret)
MAX_TTL = 7 * 86400
_TOKEN = re.compile(r"amjoin1\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})")
_REASONS = frozenset({"malformed", "unknown", "expired", "used", "voided", "blocked"})


class JoinRefused(PKIError):
    """A join token that cannot be redeemed; ``reason`` is malformed, unknown, expired, used, voided or
    blocked; ``name``: the member the token was for, when the token is known (for the audit trail)."""

    def __init__(self, reason: str, message: str, *, name: str | None = None) -> None:
        assert reason in _REASONS
        super().__init__(f"join token refused: {message}")
        self.reason = reason
        self.name = name


@dataclass(frozen=True)
class JoinGrant:
    """What a redeemed token allows: one certificate for ``name`` with these DNS names."""

    id: str
    name: str
    dns: tuple[str, ...]
    expires_at: float


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as the CA knows it: its grant, the hash of its secret, and when it was spent."""

    grant: JoinGrant
    sha256: str
    used_at: float | None = None
    voided_at: float | None = None


def _when(ts: float) -> str:
    return f"{dt.datetime.fromtimestamp(ts, dt.UTC):%Y-%m-%d %H:%M:%S}Z"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _digest(secret: bytes) -> str:
    return hashlib.sha256(secret).hexdigest()


def parse_token(token: str) -> tuple[str, bytes]:
    """``amjoin1.<16 hex>.<32 bytes base64url>`` -> (id, secret); anything else is "malformed"."""
    m = _TOKEN.fullmatch(token.strip()) if isinstance(token, str) and len(token) < 256 else None
    if m is not None:
        secret = base64.urlsafe_b64decode(m.group(2) + "=")
        if _b64(secret) == m.group(2):  # the one canonical spelling
            return m.group(1), secret
    raise JoinRefused("malformed", f"not a join token (expected {TOKEN_PREFIX}.<id>.<secret>)")


def fold(events: Iterable[dict[str, Any]], tokens: dict[str, TokenRecord] | None = None) -> dict[str, TokenRecord]:
    """The tokens of a join-tokens file, by id, with when each was used (``tokens``: the state so far)."""
    tokens = {} if tokens is None else tokens
    for ev in events:
        if ev["op"] == "create":
            grant = JoinGrant(ev["id"], ev["name"], tuple(ev["dns"]), float(ev["exp"]))
            tokens[ev["id"]] = TokenRecord(grant, ev["sha256"])
        elif ev["op"] == "use" and (t := tokens.get(ev["id"])) is not None and t.used_at is None:
            tokens[ev["id"]] = TokenRecord(t.grant, t.sha256, float(ev["at"]), t.voided_at)
        elif ev["op"] == "void":
            for token_id, t in list(tokens.items()):
                if t.grant.name == ev["name"] and t.used_at is None and t.voided_at is None:
                    tokens[token_id] = TokenRecord(t.grant, t.sha256, None, float(ev["at"]))
    return tokens


def decide(tokens: dict[str, TokenRecord], token: str, *, now: float, blocked: Collection[str] = ()) -> JoinGrant:
    """The grant of ``token``, or JoinRefused: malformed, unknown (or wrong secret), expired, used, blocked."""
    token_id, secret = parse_token(token)
    known = tokens.get(token_id)
    stored = known.sha256 if known is not None else "0" * 64
    if not hmac.compare_digest(stored, _digest(secret)) or known is None:
        raise JoinRefused("unknown", "unknown token or wrong secret")
    grant = known.grant
    if now >= grant.expires_at:
        raise JoinRefused("expired", f"the token for {grant.name} expired at {_when(grant.expires_at)}",
                          name=grant.name)
    if known.used_at is not None:
        raise JoinRefused("used", f"the token for {grant.name} was already used at {_when(known.used_at)}",
                          name=grant.name)
    if known.voided_at is not None:
        raise JoinRefused("voided", f"the token for {grant.name} was voided when {grant.name} was revoked "
                                    f"({_when(known.voided_at)})", name=grant.name)
    if grant.name in blocked:
        raise JoinRefused("blocked", f"agent {grant.name} is revoked", name=grant.name)
    return grant


class JoinTokens:
    """The join tokens of a CA directory."""

    def __init__(self, ca_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(ca_dir) / "join-tokens.jsonl"
        self.clock = clock
        self._folded: dict[str, TokenRecord] = {}
        self._where: tuple[int, int] = (-1, 0)  # (inode, bytes folded)

    @contextlib.contextmanager
    def _open(self) -> Iterator[IO[bytes]]:
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a+b") as f:
            os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield f
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _tokens(self, f: IO[bytes]) -> dict[str, TokenRecord]:
        """The folded file (called under its lock); append-only, so only the lines added since are read."""
        st = os.fstat(f.fileno())
        if st.st_ino != self._where[0] or st.st_size < self._where[1]:
            self._folded, self._where = {}, (st.st_ino, 0)
        f.seek(self._where[1])
        data = f.read()
        end = data.rfind(b"\n") + 1
        try:
            fold((json.loads(line) for line in data[:end].splitlines() if line.strip()), self._folded)
        except (ValueError, KeyError, TypeError):
            self._folded, self._where = {}, (-1, 0)
            raise PKIError(f"the join token file {self.path} is damaged") from None
        self._where = (st.st_ino, self._where[1] + end)
        return self._folded

    @staticmethod
    def _append(f: IO[bytes], event: dict[str, object]) -> None:
        f.write((json.dumps(event, sort_keys=True) + "\n").encode())
        f.flush()

    def create(self, name: str, *, ttl: float = 900.0, dns: Sequence[str] = (),
               blocked: Collection[str] = ()) -> str:
        """A one-time token for ``name``, valid ``ttl`` seconds; only its hash is kept."""
        validate_agent_name(name)
        names = validate_extra_dns_names(dns)
        if not 0 < ttl <= MAX_TTL:
            raise PKIError(f"join token lifetime must be positive and at most {MAX_TTL // 86400} days")
        if name in blocked:
            raise JoinRefused("blocked", f"agent {name} is revoked; reinstate it before it joins again")
        secret = secrets.token_bytes(32)
        with self._open() as f:
            known = self._tokens(f)
            token_id = secrets.token_hex(8)
            while token_id in known:
                token_id = secrets.token_hex(8)
            self._append(f, {"op": "create", "id": token_id, "name": name, "dns": list(names),
                             "exp": self.clock() + ttl, "sha256": _digest(secret)})
        return f"{TOKEN_PREFIX}.{token_id}.{_b64(secret)}"

    def check(self, token: str, *, blocked: Collection[str] = ()) -> JoinGrant:
        """What ``token`` would grant, without spending it (so a request refused for another reason,
        e.g. its CSR, leaves the token usable); :meth:`redeem` decides again when it spends it."""
        parse_token(token)
        with self._open() as f:
            return decide(self._tokens(f), token, now=self.clock(), blocked=blocked)

    def void(self, name: str) -> None:
        """Voids every unused token of ``name`` (the kill switch: a token made before it never works)."""
        validate_agent_name(name)
        with self._open() as f:
            self._append(f, {"op": "void", "name": name, "at": self.clock()})

    def redeem(self, token: str, *, blocked: Collection[str] = ()) -> JoinGrant:
        """Spends ``token`` (once) and returns what it grants; see :func:`decide` for the refusals."""
        parse_token(token)  # a malformed token needs no lock
        with self._open() as f:
            now = self.clock()
            grant = decide(self._tokens(f), token, now=now, blocked=blocked)
            self._append(f, {"op": "use", "id": grant.id, "at": now})
        return grant
