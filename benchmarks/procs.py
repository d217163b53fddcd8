"""Server processes: start one per server, wait until it listens, read its CPU time, stop it.

CPU time comes from ``/proc/<pid>/stat`` (utime + stime, all threads of the process, in clock ticks),
read before and after each round, so "server CPU per call" counts gRPC core threads, the event loop
and the audit exporter thread alike.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["REPO", "Processes", "ServerProcess", "children_cpu_seconds", "cpu_seconds", "redis_binary", "start_redis",
           "system_busy_seconds", "thread_cpu_ns"]

REPO = Path(__file__).resolve().parents[1]
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (every thread of it)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2:].split()  # after "pid (comm) ": field 3 (state) is index 0
    return (int(fields[11]) + int(fields[12])) / _TICK


def thread_cpu_ns(pid: int) -> dict[str, int]:
    """CPU nanoseconds of each thread of ``pid`` so far (``/proc/<pid>/task/<tid>/schedstat``), keyed
    ``"<tid>:<kernel name>"``; a thread that ends meanwhile is left out."""
    out: dict[str, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[f"{tid}:{comm}"] = int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def system_busy_seconds() -> float:
    """CPU seconds all processes of the machine spent busy so far (``/proc/stat``, all cores)."""
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def children_cpu_seconds() -> float:
    """CPU seconds of this process's finished children (wrk runs, the httpx fallback)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class ServerProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_listening(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")
            if _listening(self.port):
                return
            time.sleep(0.05)  # waiting for a process to start listening
        raise RuntimeError(f"{self.name} did not listen on port {self.port} within {timeout:.0f} s:\n"
                           f"{self.log_tail()}")

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class Processes:
    """The servers of one run; stopped in reverse start order."""

    log_dir: Path
    started: list[ServerProcess] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], port: int) -> ServerProcess:
        log = self.log_dir / f"{name}.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
        with open(log, "wb") as out:
            popen = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        proc = ServerProcess(name, popen, log, port)
        self.started.append(proc)
        return proc

    def python(self, name: str, kind: str, args: Sequence[str], port: int) -> ServerProcess:
        """``python -m benchmarks.serve KIND ARGS`` as server ``name``."""
        return self.start(name, [sys.executable, "-m", "benchmarks.serve", kind, *args], port)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()
        self.started.clear()


def redis_binary() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)), None)


@contextlib.contextmanager
def start_redis(procs: Processes, port: int) -> Iterator[tuple[str, ServerProcess]]:
    """A throwaway redis-server without persistence (like tests/redis_server.py); yields (url, process)."""
    binary = redis_binary()
    if binary is None:
        raise FileNotFoundError("redis-server not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-redis-") as workdir:
        proc = procs.start("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no", "--dir", workdir, "--daemonize", "no",
                                     "--loglevel", "warning"], port)
        proc.wait_listening(10)
        try:
            yield f"redis://127.0.0.1:{port}/0", proc
        finally:
            proc.stop()
