"""The JSONL audit log on disk: appends of whole lines, and rotation by size and age that loses nothing.

The file is opened ``O_APPEND`` (created ``0600``, or tightened to it) and each batch of whole lines
is written with one ``os.write``, so several processes (``agentmesh up`` runs each member in its own
process, all appending to one ``audit.jsonl``) never interleave lines.

Rotation happens between two writes, never inside one. Before each write the writer compares the
file it holds (``fstat``) with the file at the path (``stat``):

* the path names another file, or none: another process rotated it (or an operator moved it), so the
  writer reopens the path (creating it) and writes there;
* the path names the writer's file and it is too big (``rotate_bytes``: it would pass that size with
  this write) or too old (``rotate_seconds`` since its first record): the writer takes an exclusive
  ``flock`` on it, checks again that the path still names it (a process that rotated meanwhile
  held the lock), renames it to ``<path>.<UTC time>`` (``audit.jsonl.20261130T101500.123456Z``: one
  rename, so no two processes can overwrite each other's rotated file; a name taken gets ``-1``,
  ``-2``...), and deletes the oldest rotated files past ``keep`` (0: keeps them all).

A write that raced a rotation lands whole in the file just rotated, which is kept: only the oldest
files past ``keep`` are ever deleted. A file's age counts from its first record's ``start`` (read once
when the writer opens it; the file's modification time when unreadable), so a restart does not
postpone rotation and every process agrees. A path that is not a regular file (``/dev/stdout``) is
never rotated. :func:`log_files` lists a log's files, oldest first (``agentmesh audit show --all``).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["RotatingFile", "log_files"]

_STAMP = "%Y%m%dT%H%M%S.%fZ"
_ROTATED = re.compile(r"\.\d{8}T\d{6}\.\d{6}Z(?:-\d+)?")
_FIRST_LINE = 65536  # bytes read to find a file's first record


def log_files(path: Path) -> list[Path]:
    """The rotated files of the log at ``path``, oldest first, then ``path`` itself if it exists."""
    try:
        names = os.listdir(path.parent)
    except OSError:
        names = []
    prefix = path.name
    rotated = sorted((n for n in names if n.startswith(prefix) and _ROTATED.fullmatch(n[len(prefix):])),
                     key=lambda n: _order(n[len(prefix):]))
    out = [path.parent / n for n in rotated]
    if path.exists():
        out.append(path)
    return out


def _order(suffix: str) -> tuple[str, int]:
    stamp, _, n = suffix.partition("-")
    return stamp, int(n or 0)


class RotatingFile:
    """Appends whole lines to ``path`` and rotates it (the module docstring says how).

    ``rotate_bytes`` / ``rotate_seconds``: 0 turns that trigger off. ``clock``: seconds since the epoch
    (the rotated files' names and the age of a file). Raises OSError when the path cannot be opened.
    """

    def __init__(self, path: Path, *, rotate_bytes: int = 0, rotate_seconds: float = 0.0, keep: int = 0,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self.keep = keep
        self.clock = clock
        self.rotations = 0  # files this writer rotated
        self._fd = -1
        self._id = (0, 0)  # (st_dev, st_ino) of the file held
        self._regular = False
        self._born = 0.0
        self._open()

    def write(self, data: bytes) -> None:
        """Appends ``data`` (whole lines) with one ``os.write``, rotating first if it is due."""
        if self._fd < 0:
            raise OSError(f"audit log {self.path} is closed")
        if self._regular:
            self._before_write(len(data))
        fd = self._fd
        while data:  # a short write (disk nearly full...) is finished, not lost
            data = data[os.write(fd, data):]

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    # -- opening and rotating -------------------------------------------------------------------

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            st = os.fstat(fd)
            self._regular = stat.S_ISREG(st.st_mode)  # (not a device such as /dev/stdout)
            if self._regular:
                os.fchmod(fd, 0o600)  # also tightens a log that existed with wider permissions
                self._born = self._first_record(st)
        except OSError:
            os.close(fd)
            raise
        old, self._fd, self._id = self._fd, fd, (st.st_dev, st.st_ino)
        if old >= 0:
            os.close(old)

    def _first_record(self, st: os.stat_result) -> float:
        """When the file began: its first record's start; now for an empty file."""
        if st.st_size == 0:
            return self.clock()
        try:
            with open(self.path, "rb") as f:  # (this writer's descriptor is write-only)
                head = f.read(_FIRST_LINE)
            line, newline, _ = head.partition(b"\n")
            if newline:
                return float(json.loads(line)["start"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return st.st_mtime

    def _before_write(self, size: int) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._id:
            self._open()  # rotated (or moved) by someone else: append to the new file
            return
        if self._due(st.st_size, size):
            self._rotate()

    def _due(self, current: int, size: int) -> bool:
        if current == 0:  # this write is the file's first record: its age starts now
            self._born = self.clock()
            return False
        if self.rotate_bytes and current + size > self.rotate_bytes:
            return True
        return bool(self.rotate_seconds) and self.clock() - self._born >= self.rotate_seconds

    def _rotate(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # on the file held: one rotation of it at a time
        try:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_dev, st.st_ino) == self._id:  # nobody rotated it meanwhile
                os.rename(self.path, self._free_name())
                self.rotations += 1
                self._prune()
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._open()

    def _free_name(self) -> Path:
        stamp = dt.datetime.fromtimestamp(self.clock(), dt.UTC).strftime(_STAMP)
        name = self.path.with_name(f"{self.path.name}.{stamp}")
        n = 0
        while name.exists():
            n += 1
            name = self.path.with_name(f"{self.path.name}.{stamp}-{n}")
        return name

    def _prune(self) -> None:
        if self.keep <= 0:
            return
        rotated = log_files(self.path)
        if rotated and rotated[-1] == self.path:
            rotated.pop()
        for old in rotated[:-self.keep]:
            try:
                old.unlink()
            except FileNotFoundError:
                pass
