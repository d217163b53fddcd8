"""The CA's index: ``index.jsonl``, one JSON event per line (issue, revoke, block, unblock, rotate,
rollover), append-only, folded into the certificates issued and the members blocked."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from agentmesh.errors import PKIError

__all__ = ["MAX_NOTE", "BlockEntry", "Index", "IndexEntry", "note"]

MAX_NOTE = 200  # characters of a revocation reason or an operator name


def note(text: str, what: str) -> str:
    """A reason or operator name for the index: one line of printable text (it ends up in error messages)."""
    if not isinstance(text, str) or len(text) > MAX_NOTE or not text.isprintable():
        raise PKIError(f"{what} must be one line of printable text, at most {MAX_NOTE} characters")
    return text.strip()


@dataclass(frozen=True, slots=True)
class IndexEntry:
    name: str
    serial: int
    spiffe_id: str
    not_after: float
    revoked_at: float | None
    dns: tuple[str, ...] = ()  # the DNS SANs of the certificate
    reason: str | None = None  # revocation reason ("" when none was given); None while not revoked
    revoked_by: str | None = None
    renewed_from: int | None = None  # the serial whose holder renewed into this certificate

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if now > self.not_after else "valid"


@dataclass(frozen=True, slots=True)
class BlockEntry:
    """A member on the kill switch: the CA issues it nothing until it is unblocked."""

    name: str
    reason: str
    by: str
    at: float


class Index:
    """The state folded from index.jsonl; append-only, so a refresh reads only the lines added since."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.entries: dict[int, IndexEntry] = {}
        self.blocked: dict[str, BlockEntry] = {}
        self.under_old_root: frozenset[int] = frozenset()  # serials issued before the last rollover activation
        self._where: tuple[int, int] = (-1, 0)  # (inode, bytes folded)

    def refresh(self, path: str) -> None:
        try:
            st = os.stat(path)
            if (st.st_ino, st.st_size) == self._where:
                return  # nothing new: one stat per call
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != self._where[0] or st.st_size < self._where[1]:  # replaced (ca init --force)
                    self._reset()
                done = self._where[1]
                f.seek(done)
                data = f.read()
        except FileNotFoundError:
            self._reset()
            return
        end = data.rfind(b"\n") + 1  # a line being appended right now is folded next time
        for line in data[:end].split(b"\n")[:-1]:
            if line.strip():
                try:
                    self._apply(json.loads(line))
                except (ValueError, KeyError, TypeError, AttributeError):
                    raise PKIError(f"the CA index {path} is damaged (near byte {done})") from None
            done += len(line) + 1
        self._where = (st.st_ino, done)

    def appended(self, inode: int, offset: int, event: dict[str, Any], size: int) -> None:
        """Folds an event this process just appended at ``offset`` (under the lock), if nothing is unread before it."""
        if self._where == (inode, offset):
            self._apply(event)
            self._where = (inode, offset + size)

    def _apply(self, ev: dict[str, Any]) -> None:
        op = ev["op"]
        if op == "issue":
            serial = int(ev["serial"], 16)
            parent = ev.get("renewed_from")
            self.entries[serial] = IndexEntry(ev["name"], serial, ev["spiffe_id"], float(ev["not_after"]), None,
                                              tuple(ev.get("dns", ())),
                                              renewed_from=int(parent, 16) if parent else None)
        elif op == "revoke":
            serial = int(ev["serial"], 16)
            if (e := self.entries.get(serial)) is not None:
                self.entries[serial] = IndexEntry(e.name, e.serial, e.spiffe_id, e.not_after, float(ev["at"]),
                                                  e.dns, str(ev.get("reason", "")), str(ev.get("by", "")),
                                                  e.renewed_from)
        elif op == "block":
            self.blocked[ev["name"]] = BlockEntry(ev["name"], str(ev.get("reason", "")), str(ev.get("by", "")),
                                                  float(ev["at"]))
        elif op == "unblock":
            self.blocked.pop(ev["name"], None)
        elif op == "rollover_activate":  # from here on the new root issues: what came before chains to the old
            self.under_old_root = frozenset(self.entries)
