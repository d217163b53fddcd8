"""A real, throwaway redis-server for tests: ``with start_redis() as url: ...``.

Picks a free port (bind to port 0, read it back, close), starts ``redis-server`` with no persistence
in a temporary directory, waits until it answers PING, and stops it on exit. When the binary is
missing the test is skipped, except under ``CI=true``, where it fails: CI must run these tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

__all__ = ["free_port", "redis_server_binary", "start_redis"]

MISSING = "redis-server not installed: apt-get install redis-server"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def redis_server_binary() -> str:
    """The redis-server path, or skip (fail under CI=true) the calling test."""
    path = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)), None
    )
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(MISSING, pytrace=False)
        pytest.skip(MISSING)
    return path


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def start_redis(startup_timeout: float = 10.0) -> Iterator[str]:
    """Yields ``redis://127.0.0.1:<port>/0`` of a fresh server; stops it afterwards."""
    binary = redis_server_binary()
    with tempfile.TemporaryDirectory(prefix="agentmesh-redis-") as workdir:
        for _attempt in range(3):  # another process may grab the port between pick and bind
            port = free_port()
            proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", workdir, "--daemonize", "no", "--loglevel", "warning"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + startup_timeout
            while proc.poll() is None and time.monotonic() < deadline and not _answers_ping(port):
                time.sleep(0.01)  # waiting for a process to start, not for time to pass
            if proc.poll() is None and _answers_ping(port):
                break
            _stop(proc)
        else:
            raise RuntimeError("redis-server did not start")
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
