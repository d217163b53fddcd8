"""``agentmesh audit show|tail``: reading the JSONL audit log.

``show [--trace ID] [--all] FILE``   every trace (or those whose id starts with ID: ``agentmesh call`` prints
the id of its call) as a caller -> callee tree; ``--all`` reads the rotated files of the log too
(``FILE.<UTC time>``, oldest first: agentmesh/audit/jsonlfile.py).
``tail [-n N] [--follow] FILE``  the last N spans as one-line summaries; ``--follow`` then polls the
file for new lines (surviving truncation and rotation) until Ctrl-C.
``-o json|yaml``: the records themselves (``show``: a list of traces; ``tail``: one JSON object per line,
or one YAML document per span).

Invalid lines (a write that failed part way leaves one: agentmesh/audit/jsonlfile.py): both skip each
one with a warning on stderr naming ``FILE:LINE`` and what is wrong, never the line itself (it could
hold anything), and go on with the records after it; an unterminated last line is a write in progress
and is left out without a word (``tail --follow`` reads it once it is whole).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from agentmesh.audit.jsonlfile import log_files
from agentmesh.audit.tree import SpanRecord, build_traces, parse_record, render_trace, summarize
from agentmesh.cli.output import add_output, emit, emit_record
from agentmesh.cli.usage import examples
from agentmesh.errors import ConfigError

__all__ = ["register"]

POLL_SECONDS = 0.5


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Adds ``audit show`` and ``audit tail`` to the main parser's subcommands."""
    audit = subparsers.add_parser("audit", help="read the JSONL audit log", **examples(
        "agentmesh audit show --trace 4bf92f35 .mesh/audit.jsonl",
        "agentmesh audit tail --follow .mesh/audit.jsonl",
    ))
    sub = audit.add_subparsers(dest="audit_command", metavar="{show,tail}", required=True)

    show = sub.add_parser("show", help="render the audit log as trace trees", **examples(
        "agentmesh audit show .mesh/audit.jsonl",
        "agentmesh audit show --trace 4bf92f35 .mesh/audit.jsonl",
        "agentmesh audit show --trace 4bf92f35 .mesh/audit.jsonl -o json",
    ))
    show.add_argument("--trace", metavar="ID", help="only the trace whose id starts with ID (agentmesh call "
                      "prints it)")
    show.add_argument("--all", action="store_true", help="read the log's rotated files too, oldest first")
    show.add_argument("file", type=Path, metavar="FILE")
    add_output(show)
    show.set_defaults(func=cmd_show)

    tail = sub.add_parser("tail", help="print the last spans of the audit log as one-line summaries", **examples(
        "agentmesh audit tail -n 20 .mesh/audit.jsonl",
        "agentmesh audit tail --follow .mesh/audit.jsonl",
        "agentmesh audit tail --follow -o json .mesh/audit.jsonl",
    ))
    tail.add_argument("-n", "--lines", type=int, default=10, metavar="N", help="spans to show first (10)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new spans until Ctrl-C")
    tail.add_argument("file", type=Path, metavar="FILE")
    add_output(tail)
    tail.set_defaults(func=cmd_tail)


def cmd_show(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    records: list[SpanRecord] = []
    for path in (log_files(args.file) or [args.file]) if getattr(args, "all", False) else [args.file]:
        reader = _LineReader(path, err)
        records += reader.feed(_read(path))
        records += reader.last()
    traces = build_traces(records, args.trace)
    if args.trace and not traces:
        raise ConfigError(f"no trace with an id starting {args.trace!r} in {args.file}")

    def trees() -> list[str]:
        text = [line for n, trace in enumerate(traces) for line in [*([""] if n else []), *render_trace(trace)]]
        return text or [f"no spans in {args.file}"]

    emit(getattr(args, "output", "table"), [{"trace_id": t.trace_id, "spans": t.spans} for t in traces], trees, out)
    return 0


def cmd_tail(
    args: argparse.Namespace,
    out: TextIO | None = None,
    err: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    if args.lines < 0:
        raise ConfigError(f"--lines: expected a number >= 0, got {args.lines}")
    fmt = getattr(args, "output", "table")
    reader = _LineReader(args.file, err)
    data = _read(args.file)
    last: collections.deque[SpanRecord] = collections.deque(maxlen=args.lines)
    for record in reader.feed(data):
        last.append(record)
    for record in last:
        emit_record(fmt, record, summarize(record), out)
    out.flush()
    if not args.follow:
        return 0
    try:
        _follow(reader, len(data), out, sleep, fmt)
    except KeyboardInterrupt:
        pass
    return 0


def _follow(reader: _LineReader, offset: int, out: TextIO, sleep: Callable[[float], None], fmt: str) -> None:
    path = reader.path
    inode = _inode(path)
    while True:
        sleep(POLL_SECONDS)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue  # rotated away; wait for the new file
        if st.st_ino != inode or st.st_size < offset:  # rotated or truncated: start over
            inode, offset = st.st_ino, 0
            reader.reset()
        if st.st_size == offset:
            continue
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
        offset += len(chunk)
        for record in reader.feed(chunk):
            emit_record(fmt, record, summarize(record), out)
        out.flush()


class _LineReader:
    """Splits appended bytes into complete lines and parses each; a bad line is skipped with a warning on
    ``err`` naming its number (``parse_record``'s messages never quote the line)."""

    def __init__(self, path: Path, err: TextIO) -> None:
        self.path = path
        self.err = err
        self.lineno = 0
        self._partial = b""

    def reset(self) -> None:
        self.lineno = 0
        self._partial = b""

    def feed(self, chunk: bytes) -> list[SpanRecord]:
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        out = []
        for raw in complete:
            self.lineno += 1
            if not raw.strip():
                continue
            try:
                out.append(parse_record(raw.decode("utf-8", "replace"), f"{self.path}:{self.lineno}"))
            except ConfigError as e:
                self.err.write(f"agentmesh: warning: {e.message} (skipped)\n")
        return out

    def last(self) -> list[SpanRecord]:
        """The unterminated last line as a record if it is one (a whole record missing only its newline);
        nothing, and no warning, if it is not (a write in progress)."""
        raw, self._partial = self._partial, b""
        if not raw.strip():
            return []
        try:
            return [parse_record(raw.decode("utf-8", "replace"), f"{self.path}:{self.lineno + 1}")]
        except ConfigError:
            return []


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"audit log not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"audit log is a directory: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read audit log {path}: {e.strerror}") from None


def _inode(path: Path) -> int:
    try:
        return os.stat(path).st_ino
    except OSError:
        return -1
