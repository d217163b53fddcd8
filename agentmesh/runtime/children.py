"""One child process of ``agentmesh up`` (:class:`Child`), and the metrics socket ``up`` holds for it.

A member's Prometheus endpoint listens on a socket ``up`` binds (:func:`listen_metrics`: port 0 picks a
free one) and hands to every incarnation of the child (``AGENTMESH_METRICS_ADDRESS`` and
``AGENTMESH_METRICS_FD``, :mod:`agentmesh.audit.prom`). ``up`` learns the port when it binds, before the
child starts, without the race of picking a free port and closing it again (another process could take it
before the child binds it); and since ``up`` keeps the socket open, a restarted child is back on the same
address (Prometheus targets stay valid) and no other process can take it while the child is down. Scrapes
that arrive meanwhile wait in the socket's backlog and are answered once the child serves again.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from agentmesh.audit.prom import METRICS_ADDRESS_ENV, METRICS_FD_ENV
from agentmesh.errors import ConfigError
from agentmesh.runtime.supervision import CrashHistory, RestartPolicy

__all__ = ["Child", "exit_text", "listen_metrics"]


def exit_text(code: int | None) -> str:
    """``status 3`` or ``signal SIGKILL`` (asyncio reports death by a signal as a negative code)."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def listen_metrics(address: str, what: str, avoid: Collection[int] = ()) -> tuple[socket.socket, str]:
    """A socket listening at ``address`` (``host:port``; port 0: a free one, none of ``avoid``) and the
    address it is bound to."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    passed: list[socket.socket] = []  # free ports the config gives a member: held until another is found
    try:
        while True:
            sock = socket.create_server((host, int(port)), family=family, backlog=128)
            if int(port) or sock.getsockname()[1] not in avoid or len(passed) > 100:
                break
            passed.append(sock)
    except (OSError, ValueError) as e:
        raise ConfigError(f"metrics of {what}: cannot listen on {address}: {getattr(e, 'strerror', None) or e}") \
            from None
    finally:
        for s in passed:
            s.close()
    bound = sock.getsockname()[1]
    return sock, f"[{host}]:{bound}" if family == socket.AF_INET6 else f"{host}:{bound}"


@dataclass
class Child:
    name: str
    kind: str  # control | agent | bridge
    address: str
    args: list[str]  # the agentmesh command that runs it
    log_path: Path
    history: CrashHistory = field(default_factory=lambda: CrashHistory(RestartPolicy()))
    proc: asyncio.subprocess.Process | None = None
    status: str = "stopped"
    restarts: int = 0
    last_exit: int | None = None
    log_start: int = 0  # where this incarnation's output starts in the log
    metrics: str | None = None  # where its metrics endpoint listens (port 0 until up binds it); None: nowhere
    metrics_socket: socket.socket | None = None  # bound and held by up, handed to each incarnation

    def last_lines(self, n: int = 10) -> list[str]:
        """The last ``n`` lines this incarnation of the child wrote (this run, since its last start)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_start)
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()][-n:]

    def last_line(self) -> str:
        lines = self.last_lines(1)
        return lines[0] if lines else "(no output)"

    @property
    def label(self) -> str:
        """``agent ingestor``, ``bridge`` (not ``bridge bridge``)."""
        return self.name if self.name == self.kind else f"{self.kind} {self.name}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def listen_metrics(self, avoid: Collection[int] = ()) -> None:
        """Binds the metrics socket (once: restarts reuse it); a free port is none of ``avoid``."""
        if self.metrics is not None and self.metrics_socket is None:
            self.metrics_socket, self.metrics = listen_metrics(self.metrics, self.label, avoid)

    def close_metrics(self) -> None:
        if self.metrics_socket is not None:
            self.metrics_socket.close()
            self.metrics_socket = None

    def metrics_env(self) -> dict[str, str]:
        """What tells the child to serve its metrics on the socket up holds."""
        if self.metrics_socket is None or self.metrics is None:
            return {}
        return {METRICS_ADDRESS_ENV: self.metrics, METRICS_FD_ENV: str(self.metrics_socket.fileno())}

    @property
    def fds(self) -> tuple[int, ...]:
        """The descriptors the child inherits for its metrics."""
        return (self.metrics_socket.fileno(),) if self.metrics_socket is not None else ()

    def state(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "address": self.address, "status": self.status,
                "pid": self.proc.pid if self.proc is not None else None, "restarts": self.restarts,
                "last_exit": exit_text(self.last_exit) if self.last_exit is not None else None,
                "log": str(self.log_path), "metrics": self.metrics if self.metrics_socket is not None else None}
