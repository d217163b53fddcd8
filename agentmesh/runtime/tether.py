"""A child of ``agentmesh up`` dies with it, even when ``up`` is killed with SIGKILL.

``up`` starts each child as ``python -m agentmesh.runtime.tether --parent PID --lifeline FD --grace S --
COMMAND...``; before running the agentmesh command, the child ties itself to ``up`` in two ways:

* **PR_SET_PDEATHSIG** (Linux, ``prctl`` through ctypes): the kernel sends the child SIGTERM the moment
  its parent exits, however it exits, so the child drains for the grace period and stops as on a
  normal stop. Set in the child itself, first thing, not in a ``preexec_fn`` (which the subprocess
  docs call unsafe in a process with threads, and ``up`` has gRPC's); a parent that died before the
  call is caught by comparing ``getppid()`` with ``PID`` right after it.
* **a lifeline pipe**: ``up`` holds the only write end; a daemon thread here blocks reading ``FD`` and
  sees end-of-file when ``up`` is gone. It sends SIGTERM where PDEATHSIG does not exist (not Linux),
  and everywhere it ends the process with SIGKILL if it is still alive ``grace`` + 5 s later: a child
  whose drain hangs cannot outlive its supervisor for long either.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

__all__ = ["main", "tether"]

PR_SET_PDEATHSIG = 1
#: after the parent is gone: the drain's grace period plus this, then SIGKILL
HARD_STOP_MARGIN = 5.0


def _pdeathsig(sig: int) -> bool:
    """Asks the kernel for ``sig`` when the parent exits (Linux); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _watch(fd: int, grace: float, margin: float, signalled: bool) -> None:
    try:
        while os.read(fd, 1):  # up never writes: only end-of-file (up gone) returns here
            pass
    except OSError:
        pass
    if not signalled:
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace + margin)  # the drain had its grace period
    os.kill(os.getpid(), signal.SIGKILL)


def tether(parent: int, lifeline: int | None, grace: float, margin: float = HARD_STOP_MARGIN) -> None:
    """Ties this process to ``parent`` (see the module docstring); exits at once if it is already gone."""
    signalled = _pdeathsig(signal.SIGTERM)
    if os.getppid() != parent:  # up died before we could ask
        os._exit(1)
    if lifeline is not None:
        threading.Thread(target=_watch, args=(lifeline, grace, margin, signalled), name="agentmesh-lifeline",
                         daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agentmesh.runtime.tether",
                                description="run an agentmesh command that dies with its parent")
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--lifeline", type=int)
    p.add_argument("--grace", type=float, default=10.0)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    tether(args.parent, args.lifeline, args.grace)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    from agentmesh.cli.main import main as agentmesh

    return agentmesh(command)


if __name__ == "__main__":
    sys.exit(main())
