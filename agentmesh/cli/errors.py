"""Every failure of a command as one line for the operator: ``agentmesh: error: ...`` and exit code 2.

:func:`describe` is the one place that turns an exception into that line:

* a :class:`~agentmesh.errors.MeshError`: its message (the tree in :mod:`agentmesh.errors`), plus any
  notes added on the way (``agentmesh call`` adds the trace id);
* an :class:`OSError`: what failed and the path(s) it names (``cannot open ...: No such file or
  directory``), a TLS error's reason, a refused or unreachable address;
* anything else: its type and message, marked unexpected (a bug, or an app's own error).

Tracebacks are for ``--debug`` (or ``AGENTMESH_DEBUG=1``) only. Two failures are turned into
MeshErrors before they happen or where they happen, so that their line names the cause:
:func:`check_listen` (a busy port, with the address) and :class:`AppImportError` (an app that raises
while it is imported, with the module and the exception's last line).
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import sysconfig
import traceback
from pathlib import Path

from agentmesh.errors import ConfigError, MeshError, Unavailable

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_UNEXPECTED", "AppImportError", "check_listen", "describe",
           "exit_code"]

EXIT_ERROR = 2  # an operator error: bad input, a missing file, a busy port, an unreachable peer
EXIT_UNEXPECTED = 1  # an exception agentmesh did not expect (run again with --debug)
EXIT_INTERRUPTED = 130  # Ctrl-C

_LIBRARY_DIRS = tuple({str(Path(p)) for k, p in sysconfig.get_paths().items()
                       if k in ("stdlib", "platstdlib", "purelib", "platlib")})


class AppImportError(ConfigError):
    """An agent's ``app`` module raised while it was imported (its own bug or a missing setting)."""

    def __init__(self, spec: str, error: BaseException) -> None:
        where = _app_frame(error)
        at = f" at {where}" if where else ""
        super().__init__(f"app {spec!r}: importing {spec.partition(':')[0]} failed{at}: {last_line(error)}")


def last_line(error: BaseException) -> str:
    """The last line Python would print for ``error`` (``KeyError: 'OPENAI_KEY'``)."""
    lines = traceback.format_exception_only(type(error), error)
    return lines[-1].strip() if lines else type(error).__name__


def _app_frame(error: BaseException) -> str | None:
    """``file:line`` of the deepest frame in the app's own code (not Python's or an installed library's)."""
    if isinstance(error, SyntaxError) and error.filename:
        return f"{error.filename}:{error.lineno}"
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not f.filename.startswith("<") and not f.filename.startswith(_LIBRARY_DIRS)]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None


def describe(error: BaseException) -> str:
    """The one line (without the ``agentmesh: error:`` prefix) an operator sees for ``error``."""
    if isinstance(error, MeshError):
        text = error.message
    elif isinstance(error, ssl.SSLError):
        detail = getattr(error, "verify_message", None) or error.strerror or getattr(error, "reason", None)
        text = f"TLS: {detail or error}"
    elif isinstance(error, OSError):
        text = _os_error(error)
    else:
        text = f"unexpected {last_line(error)} (run with --debug for the traceback)"
    notes = [n for n in getattr(error, "__notes__", ()) if isinstance(n, str)]
    return f"{text} ({'; '.join(notes)})" if notes else text


def exit_code(error: BaseException) -> int:
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_ERROR if isinstance(error, MeshError | OSError) else EXIT_UNEXPECTED


def _os_error(error: OSError) -> str:
    reason = error.strerror or (os.strerror(error.errno) if error.errno else "") or type(error).__name__
    if error.filename is not None and error.filename2 is not None:
        return f"{error.filename} -> {error.filename2}: {reason}"
    if error.filename is not None:
        return f"{os.fsdecode(error.filename)}: {reason}"
    return reason


def check_listen(address: str, what: str) -> None:
    """Refuses, in one line naming ``address``, to start ``what`` on an address it could not listen on
    (another process holds the port, or the host has no such address). Port 0 is always free.

    Binds (with ``SO_REUSEADDR``, as servers do) and closes again: a real check, not a guess.
    """
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) == 0:
        return  # not host:port, or any free port: the server's own check speaks
    port = int(port_text)
    host = host.strip("[]") or "0.0.0.0"  # ":7100" listens on every address
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise Unavailable(f"{what}: cannot listen on {address}: unknown host {host!r}") from None
    failures: list[OSError] = []
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(sockaddr)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise Unavailable(f"{what}: cannot listen on {address}: address already in use (another "
                                      f"process holds port {port}; see: ss -ltnp 'sport = :{port}')") from None
                failures.append(e)
    if failures and len(failures) == len(infos):
        first = failures[0]
        reason = {errno.EADDRNOTAVAIL: "not an address of this host",
                  errno.EACCES: "permission denied (ports below 1024 need privileges)"}.get(
                      first.errno or 0, first.strerror or str(first))
        raise Unavailable(f"{what}: cannot listen on {address}: {reason}")
