"""The JSONL audit log on disk: appends of whole lines, and rotation by size and age that loses nothing.

The file is opened ``O_APPEND`` (created ``0600``, or tightened to it) and each batch of whole lines
is written with one ``os.write``, so several processes (``agentmesh up`` runs each member in its own
process, all appending to one ``audit.jsonl``) never interleave lines.

Links are never followed. The path is opened ``O_NOFOLLOW`` (and ``O_CLOEXEC``), compared with the file
held by ``lstat``, and the file's first record is read through the writer's own descriptor: a symbolic
link at the path (put there by anyone who can write to the log's directory, to aim the records, and a
``chmod``, at another file) is refused. At start that is one error line (``audit.jsonl_path``: a
symbolic link); found at a reopen, every write fails while it is there (the exporter's failures are
counted and ``audit.required`` sees them), and nothing is written to the link's target or changes its
mode. The log's directory itself is trusted (created ``0700``). Standard output is the console
exporter's, not a path here.

A write that fails part way (a full disk, a file size limit) raises :class:`PartialWrite`, which says how
many of its lines landed whole; the line it cut stays in the file, but the next write begins with a
newline, so the next record is never glued to it. The writer also prefixes one when the file it opens
does not end with a newline (a process that died mid-write), unless the file is growing as it looks (another
writer at work: its writes are whole lines). It does not look again before each write: while another process
appends more than a page at once, the file's size grows a page at a time and its last byte is then inside that
process's line, so a check there would add empty lines. Readers (``agentmesh audit show``) skip a torn line,
saying so.

Rotation happens between two writes, never inside one. Before each write the writer compares the
file it holds with the file at the path (``lstat``):

* the path names another file, or none: another process rotated it (or an operator moved it), so the
  writer reopens the path (creating it; a link there is refused) and writes there;
* the path names the writer's file and it is too big (``rotate_bytes``: it would pass that size with
  this write) or too old (``rotate_seconds`` since its first record): the writer takes an exclusive
  ``flock`` on it, checks again that the path still names it (a process that rotated meanwhile
  held the lock), renames it to ``<path>.<UTC time>`` (``audit.jsonl.20261130T101500.123456Z``: one
  rename, so no two processes can overwrite each other's rotated file; a name taken gets ``-1``,
  ``-2``...), and deletes the oldest rotated files past ``keep`` (0: keeps them all).

A write that raced a rotation lands whole in the file just rotated, which is kept: only the oldest
files past ``keep`` are ever deleted. A file's age counts from its first record's ``start`` (read once
when the writer opens it; the file's modification time when unreadable), so a restart does not
postpone rotation and every process agrees. A path that is not a regular file (``/dev/null``) is
never rotated. :func:`log_files` lists a log's files, oldest first (``agentmesh audit show --all``).
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["PartialWrite", "RotatingFile", "log_files"]

_STAMP = "%Y%m%dT%H%M%S.%fZ"
_ROTATED = re.compile(r"\.\d{8}T\d{6}\.\d{6}Z(?:-\d+)?")
_FIRST_LINE = 65536  # bytes read to find a file's first record
#: read and write (to read the first record and the last byte back), append, create, never through a link
_OPEN = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


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


class PartialWrite(OSError):
    """A write that failed after part of it landed: ``lines`` of its lines were written whole (the next
    one only in part, if at all; the next write ends it)."""

    def __init__(self, error: OSError, lines: int) -> None:
        super().__init__(error.errno, error.strerror)
        self.lines = lines


class RotatingFile:
    """Appends whole lines to ``path`` and rotates it (the module docstring says how).

    ``rotate_bytes`` / ``rotate_seconds``: 0 turns that trigger off. ``clock``: seconds since the epoch
    (the rotated files' names and the age of a file). Raises OSError when the path cannot be opened
    (a symbolic link: ``ELOOP``).
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
        self._size = 0  # the held file's size when last looked at (before a write)
        self._torn = False  # this writer's last write ended inside a line
        self._open()

    def write(self, data: bytes) -> None:
        """Appends ``data`` (whole lines) with one ``os.write``, rotating first if it is due, and after a
        newline if the file does not end with one. Raises OSError when nothing of ``data`` was written,
        :class:`PartialWrite` when some of it was."""
        if self._fd < 0:
            raise OSError(f"audit log {self.path} is closed")
        if self._regular:
            self._before_write(len(data))
        fd = self._fd
        lead = 1 if self._torn else 0
        buf = memoryview(b"\n" + data if lead else data)
        done = 0
        try:
            while done < len(buf):  # a short write (disk nearly full...) is finished, or fails below
                n = os.write(fd, buf[done:])
                if n <= 0:
                    raise OSError(errno.EIO, "nothing written")
                done += n
        except OSError as e:
            if done:
                self._torn = buf[done - 1] != 0x0A
            if done > lead:
                raise PartialWrite(e, data.count(b"\n", 0, done - lead)) from None
            raise
        self._torn = False

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    # -- opening and rotating -------------------------------------------------------------------

    def _open(self) -> None:
        try:
            fd = os.open(self.path, _OPEN, 0o600)
        except OSError as e:
            if e.errno == errno.ELOOP and os.path.islink(self.path):
                raise OSError(errno.ELOOP, "it is a symbolic link, and an audit log is never written through "
                              "one", str(self.path)) from None
            raise
        try:
            st = os.fstat(fd)
            regular = stat.S_ISREG(st.st_mode)  # (not a device such as /dev/null)
            if regular:
                os.fchmod(fd, 0o600)  # also tightens a log that existed with wider permissions
                self._born = self._first_record(fd, st)
        except OSError:
            os.close(fd)
            raise
        old, self._fd, self._id = self._fd, fd, (st.st_dev, st.st_ino)
        self._regular, self._size = regular, st.st_size
        self._torn = regular and self._ends_inside_a_line() and os.fstat(fd).st_size == st.st_size
        if old >= 0:
            os.close(old)

    def _first_record(self, fd: int, st: os.stat_result) -> float:
        """When the file held (``fd``) began: its first record's start; now for an empty file."""
        if st.st_size == 0:
            return self.clock()
        try:
            head = os.pread(fd, _FIRST_LINE, 0)
            line, newline, _ = head.partition(b"\n")
            if newline:
                return float(json.loads(line)["start"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return st.st_mtime

    def _ends_inside_a_line(self) -> bool:
        """Whether the file held does not end with a newline (a torn write: the next one starts a line)."""
        if self._size == 0:
            return False
        try:
            return os.pread(self._fd, 1, self._size - 1) != b"\n"
        except OSError:
            return True  # (unknown: an empty line costs nothing)

    def _before_write(self, size: int) -> None:
        try:
            st = os.lstat(self.path)  # (a link at the path is not the file held: reopening refuses it)
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._id:
            self._open()  # rotated (or moved) by someone else: append to the new file
            return
        self._size = st.st_size
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
                st = os.lstat(self.path)
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
        while os.path.lexists(name):
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
