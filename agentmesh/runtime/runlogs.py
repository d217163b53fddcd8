"""The log directory of ``agentmesh up``: one fresh directory per run, the last few kept.

::

    <logs>/20261130-141923-4711/      one run (start time, pid of ``up``): sortable by name
        control.log  ingestor.log ...  each child's output, this run only (restarts append, marked)
        run.json                       what ``up`` knows: its pid, each child's pid, status, restarts, last exit,
                                       metrics address
    <logs>/latest -> 20261130-141923-4711
    <logs>/ingestor.log -> latest/ingestor.log      (``tail -f`` follows the current run)

A new run removes the oldest run directories beyond ``keep`` (never one whose ``up`` is still running).
``agentmesh status`` reads ``latest``; ``agentmesh top`` the metrics addresses of a run still going
(:func:`running_metrics`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["KEEP_RUNS", "RunLogs", "latest_run", "pid_alive", "read_state", "running_metrics"]

KEEP_RUNS = 5
_RUN_ID = re.compile(r"^\d{8}-\d{6}-\d+(\.\d+)?$")
STATE = "run.json"
LATEST = "latest"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def read_state(run_dir: Path) -> dict[str, Any]:
    """A run's ``run.json`` ({} when there is none or it cannot be read)."""
    try:
        doc = json.loads((run_dir / STATE).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def latest_run(root: Path) -> Path | None:
    """The directory of the newest run under ``root`` (None: no run yet)."""
    link = root / LATEST
    if link.is_dir():
        return link.resolve()
    runs = sorted(p for p in root.glob("*") if p.is_dir() and _RUN_ID.match(p.name)) if root.is_dir() else []
    return runs[-1] if runs else None


def running_metrics(root: Path) -> dict[str, str]:
    """Each member's metrics address as the ``up`` of the newest run under ``root`` recorded it, while that
    ``up`` runs ({} when none does: the addresses of a stopped run may be anyone's now)."""
    run = latest_run(root)
    state = read_state(run) if run is not None else {}
    pid = state.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid) or state.get("state") == "stopped":
        return {}
    children = state.get("children")
    return {c["name"]: c["metrics"] for c in children if isinstance(c, dict) and isinstance(c.get("name"), str)
            and isinstance(c.get("metrics"), str)} if isinstance(children, list) else {}


def _symlink(target: str, path: Path) -> None:
    """``path`` -> ``target``, replacing whatever is there in one step."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, path)


@dataclass(frozen=True)
class RunLogs:
    root: Path
    run_id: str

    @property
    def dir(self) -> Path:
        return self.root / self.run_id

    @classmethod
    def create(cls, root: Path, names: list[str], *, keep: int = KEEP_RUNS, now: float | None = None) -> RunLogs:
        """A fresh run directory under ``root`` (the ``latest`` link and the per-child links point into it),
        the oldest runs beyond ``keep`` removed."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
        root.mkdir(parents=True, exist_ok=True)
        run = cls(root, f"{stamp}-{os.getpid()}")
        n = 0
        while True:
            try:
                run.dir.mkdir()
                break
            except FileExistsError:  # a second run of this process within the same second
                n += 1
                run = cls(root, f"{stamp}-{os.getpid()}.{n}")
        _symlink(run.run_id, root / LATEST)
        for name in names:
            link = root / f"{name}.log"
            if link.is_symlink() and os.readlink(link) == f"{LATEST}/{name}.log":
                continue
            _symlink(f"{LATEST}/{name}.log", link)  # (a log of an older version of up is replaced)
        run.prune(keep)
        return run

    def log(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def prune(self, keep: int) -> list[Path]:
        """Removes the oldest run directories beyond ``keep`` (this one counts; live runs are kept)."""
        runs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.is_symlink() and _RUN_ID.match(p.name))
        removed = []
        for old in runs[:max(0, len(runs) - max(keep, 1))]:
            if old == self.dir:
                continue
            pid = read_state(old).get("pid")
            if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
                continue
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
        return removed

    def write_state(self, doc: dict[str, Any]) -> None:
        """Replaces ``run.json`` atomically (readers never see half a file)."""
        tmp = self.dir / f".{STATE}.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.dir / STATE)
