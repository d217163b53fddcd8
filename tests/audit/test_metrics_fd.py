"""The metrics socket ``agentmesh up`` hands a member (AGENTMESH_METRICS_FD with AGENTMESH_METRICS_ADDRESS).

A member adopts the descriptor only if it is a TCP socket listening on exactly the address it was told;
anything else (a stale value in an operator's shell, another listener the process holds, a UDP socket, a
pipe) refuses to start with one ConfigError line and leaves that descriptor open: it may be something the
process still uses. ``up`` never passes its own environment's handoff on: a child gets its own, or none."""

from __future__ import annotations

import asyncio
import os
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshkit import write_mesh
from prometheus_client import CollectorRegistry, Counter

from agentmesh.audit.prom import METRICS_ADDRESS_ENV, METRICS_FD_ENV, MetricsEndpoint
from agentmesh.configfile import load_config
from agentmesh.errors import ConfigError
from agentmesh.runtime.children import listen_metrics
from agentmesh.runtime.supervisor import Supervisor


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("handed_calls", "calls", registry=registry).inc()
    return registry


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _hand(monkeypatch: pytest.MonkeyPatch, address: str, fd: int | str) -> None:
    monkeypatch.setenv(METRICS_ADDRESS_ENV, address)
    monkeypatch.setenv(METRICS_FD_ENV, str(fd))


def _still_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_the_socket_up_hands_over_is_served(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: a listener bound to the address the member is told is adopted (and served)."""
    sock, address = listen_metrics("127.0.0.1:0", "agent a")
    _hand(monkeypatch, address, os.dup(sock.fileno()))
    endpoint = MetricsEndpoint(_registry(), address)
    try:
        assert endpoint.address == address
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as res:
            assert "handed_calls_total 1.0" in res.read().decode()
    finally:
        endpoint.close()
        sock.close()


@pytest.fixture
def foreign() -> Iterator[dict[str, Any]]:
    """Descriptors a process may hold that are not its metrics listener, with the address it is told."""
    other = socket.create_server(("127.0.0.1", 0))  # another listener (its gRPC port, say)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    idle = socket.socket()  # bound where it should be, but not listening
    idle.bind(("127.0.0.1", 0))
    read, write = os.pipe()
    held = {
        "a listener elsewhere": (other.fileno(), _free_address()),
        "a UDP socket on the address": (udp.fileno(), f"127.0.0.1:{udp.getsockname()[1]}"),
        "a TCP socket not listening": (idle.fileno(), f"127.0.0.1:{idle.getsockname()[1]}"),
        "a pipe": (read, _free_address()),
    }
    yield held
    for s in (other, udp, idle):
        s.close()
    os.close(read)
    os.close(write)


@pytest.mark.parametrize("what", ["a listener elsewhere", "a UDP socket on the address", "a TCP socket not listening",
                                  "a pipe"])
def test_a_descriptor_that_is_not_the_listener_is_refused_and_left_open(
        monkeypatch: pytest.MonkeyPatch, foreign: dict[str, Any], what: str) -> None:
    fd, address = foreign[what]
    _hand(monkeypatch, address, fd)
    with pytest.raises(ConfigError, match=f"^metrics: {METRICS_FD_ENV}={fd} is not a TCP socket listening on "
                                          f"{address} "):
        MetricsEndpoint(_registry(), address)
    assert _still_open(fd), "a descriptor the member does not own was closed"


def test_the_foreign_listener_keeps_working(monkeypatch: pytest.MonkeyPatch) -> None:
    other = socket.create_server(("127.0.0.1", 0))
    wanted = _free_address()
    _hand(monkeypatch, wanted, other.fileno())
    with pytest.raises(ConfigError):
        MetricsEndpoint(_registry(), wanted)
    with other, socket.create_connection(other.getsockname(), timeout=5):
        pass  # still listening, where it was
    assert METRICS_FD_ENV not in os.environ  # taken once, refused or not


@pytest.mark.parametrize("value", ["seven", "-1", "999999"])
def test_a_value_that_is_no_descriptor_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    address = _free_address()
    _hand(monkeypatch, address, value)
    with pytest.raises(ConfigError, match=f"{METRICS_FD_ENV}={value} is not a TCP socket"):
        MetricsEndpoint(_registry(), address)


@pytest.mark.parametrize("metrics", [False, True])
async def test_up_passes_each_child_its_own_handoff_never_its_environment_s(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metrics: bool) -> None:
    """The attack: a stale handoff in the shell that runs ``up`` (with ``--no-metrics``, every member would bind
    its address, or adopt its descriptor). Beside it (``metrics``), each child gets its own."""
    path = write_mesh(tmp_path, {"alpha": {}})
    monkeypatch.setenv(METRICS_ADDRESS_ENV, "127.0.0.1:9999")
    monkeypatch.setenv(METRICS_FD_ENV, "7")
    envs: list[dict[str, str]] = []

    class Proc:
        pid, returncode, stdin = 1, None, None

    async def spawned(*argv: str, env: dict[str, str], **kw: Any) -> Proc:  # the child's environment; not run
        envs.append(env)
        return Proc()

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spawned)
    sup = Supervisor(load_config(path), path, metrics=metrics, with_bridge=False)
    monkeypatch.setattr(sup, "_join_token", lambda child: None)
    sup._lifeline = os.pipe()
    own: dict[str, dict[str, str]] = {}
    try:
        for child in sup.children:
            child.listen_metrics()
            child.log_path = tmp_path / f"{child.name}.log"
            own[child.name] = child.metrics_env()
            await sup._spawn(child)
    finally:
        for child in sup.children:
            child.close_metrics()
        for fd in sup._lifeline:
            os.close(fd)
    seen = {child.name: env for child, env in zip(sup.children, envs, strict=True)}
    assert set(seen) == {"control", "alpha"}
    for name, env in seen.items():
        handoff = {k: env[k] for k in (METRICS_ADDRESS_ENV, METRICS_FD_ENV) if k in env}
        assert handoff == own[name]
        assert bool(handoff) is metrics and "127.0.0.1:9999" not in handoff.values()
