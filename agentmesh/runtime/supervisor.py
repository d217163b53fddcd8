"""``agentmesh up``: the control plane, every agent and the bridge as supervised child processes.

Children start in order (control first), each awaited until healthy; their output goes to one log
file each; on stop every child gets SIGTERM (drain), then SIGKILL after the grace period, so nothing
is left running. A child that dies is reported with its last log lines.

A member without an identity yet joins: ``up`` runs beside the CA (it starts the control plane), so it
makes a one-time join token for that member and hands it to the child on stdin (``--join -``); the
child makes its own key and sends only a CSR (``control.join_address`` must be set).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh.config import MeshConfig
from agentmesh.errors import ConfigError, MeshError, Unavailable
from agentmesh.pki.join import JoinTokens
from agentmesh.runtime.channel import secure_channel
from agentmesh.runtime.credentials import AgentIdentity

__all__ = ["Child", "Supervisor"]


@dataclass
class Child:
    name: str
    kind: str  # control | agent | bridge
    address: str
    argv: list[str]
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    status: str = "stopped"

    def last_lines(self, n: int = 10) -> list[str]:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return lines[-n:]


class Supervisor:
    def __init__(self, config: MeshConfig, config_path: Path, *, log_dir: Path | None = None,
                 with_bridge: bool = True, start_timeout: float = 30.0) -> None:
        self.config = config
        self.config_path = config_path
        self.log_dir = log_dir or config.ca_dir.parent / "logs"
        self.start_timeout = start_timeout
        cli = [sys.executable, "-m", "agentmesh.cli.main"]
        cfg = ["--config", str(config_path)]
        self.children = [Child(config.control.name, "control", config.control.address,
                               [*cli, "control", *cfg], self.log_dir / "control.log")]
        for name, agent in config.agents.items():
            self.children.append(Child(name, "agent", agent.address, [*cli, "agent", name, *cfg],
                                       self.log_dir / f"{name}.log"))
        if with_bridge:
            b = config.bridge
            self.children.append(Child(b.name, "bridge", b.listen, [*cli, "bridge", *cfg], self.log_dir / "bridge.log"))
        self._probe_identity: AgentIdentity | None = None

    # ------------------------------------------------------------------ start / health
    async def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._probe_identity = AgentIdentity(self.config.identity_dir(self.config.control.name),
                                             self.config.trust_domain)
        try:
            for child in self.children:
                await self._spawn(child)
                await self._wait_healthy(child)
        except BaseException:
            await self.stop()
            raise

    def _join_token(self, child: Child) -> str | None:
        """A one-time join token for a member that has no identity yet (None: it has one)."""
        directory = self.config.identity_dir(child.name)
        if child.kind == "control" or (directory / "cert.pem").exists():
            return None
        if not self.config.control.join_address:
            raise ConfigError(f"{child.kind} {child.name} has no identity in {directory}: onboard it (agentmesh cert "
                              "issue) or set control.join_address so that 'up' joins it")
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        bundle = directory / "bundle.pem"
        if not bundle.exists():  # public: what the member verifies the control plane with
            bundle.write_bytes((self.config.ca_dir / "bundle.pem").read_bytes())
        dns = ("localhost",) if child.kind == "bridge" else ()
        return JoinTokens(self.config.ca_dir).create(child.name, ttl=300.0, dns=dns)

    async def _spawn(self, child: Child) -> None:
        token = self._join_token(child)
        argv = [*child.argv, "--join", "-"] if token else child.argv
        log = open(child.log_path, "ab")  # handed to the child, closed here after the spawn
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRPC_VERBOSITY": os.environ.get("GRPC_VERBOSITY", "ERROR")}
        child.proc = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log, env=env,
                                                          stdin=asyncio.subprocess.PIPE if token else None,
                                                          start_new_session=True, cwd=os.getcwd())
        log.close()
        if token and child.proc.stdin is not None:
            child.proc.stdin.write(token.encode() + b"\n")  # never on a command line, where ps shows it
            await child.proc.stdin.drain()
            child.proc.stdin.close()
        child.status = "starting"

    async def _healthy(self, child: Child) -> bool:
        if child.kind == "bridge":
            return await self._http_ok(child)
        assert self._probe_identity is not None
        ch = secure_channel(self._probe_identity, child.address, child.name)
        try:
            res = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return bool(res.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.aio.AioRpcError:
            return False
        finally:
            await ch.close()

    async def _http_ok(self, child: Child) -> bool:
        host, _, port = child.address.rpartition(":")
        ctx = None
        if self.config.bridge.tls:
            ctx = ssl.create_default_context(cafile=str(self.config.identity_dir(child.name) / "bundle.pem"))
            ctx.check_hostname = False  # a liveness probe of our own child on loopback
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port), ssl=ctx), 1)
            writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            line = await asyncio.wait_for(reader.readline(), 1)
            writer.close()
            return b" 200 " in line
        except (OSError, TimeoutError, ssl.SSLError):
            return False

    async def _wait_healthy(self, child: Child) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert child.proc is not None
            if child.proc.returncode is not None:
                child.status = f"exited ({child.proc.returncode})"
                raise Unavailable(self.death_report(child))
            if await self._healthy(child):
                child.status = "healthy"
                return
            await asyncio.sleep(0.1)
        child.status = "unhealthy"
        raise Unavailable(f"{child.kind} {child.name} not healthy within {self.start_timeout:.0f}s\n"
                          + "\n".join(f"    {line}" for line in child.last_lines()))

    def death_report(self, child: Child) -> str:
        code = child.proc.returncode if child.proc else None
        lines = "\n".join(f"    {line}" for line in child.last_lines())
        return f"{child.kind} {child.name} exited with status {code}; last log lines ({child.log_path}):\n{lines}"

    # ------------------------------------------------------------------ run / stop
    def table(self) -> str:
        rows = [("NAME", "KIND", "SPIFFE ID", "ADDRESS", "STATUS")]
        for c in self.children:
            rows.append((c.name, c.kind, str(self.config.spiffe_id(c.name)), c.address, c.status))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)

    async def watch(self, stop: asyncio.Event) -> Child | None:
        """Returns the first child that dies, or None when ``stop`` is set."""
        waits = {asyncio.ensure_future(c.proc.wait()): c for c in self.children if c.proc is not None}
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({*waits, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for f in (*waits, stopper):
            if f not in done:
                f.cancel()
        for f in done:
            if f in waits:
                dead = waits[f]
                dead.status = f"exited ({dead.proc.returncode if dead.proc else '?'})"
                return dead
        return None

    async def stop(self, grace: float | None = None) -> None:
        grace = self.config.grace_period if grace is None else grace
        running = [c for c in reversed(self.children) if c.proc is not None and c.proc.returncode is None]
        for c in running:
            with contextlib.suppress(ProcessLookupError):
                assert c.proc is not None
                c.proc.send_signal(signal.SIGTERM)
        for c in running:
            assert c.proc is not None
            try:
                await asyncio.wait_for(c.proc.wait(), grace + 1)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(c.proc.pid, signal.SIGKILL)
                await c.proc.wait()
            c.status = "stopped"


async def run_up(config: MeshConfig, config_path: Path, *, with_bridge: bool = True) -> int:
    sup = Supervisor(config, config_path, with_bridge=with_bridge)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await sup.start()
    except MeshError as e:
        print(f"agentmesh up: {e.message}", file=sys.stderr)
        return 1
    print(sup.table(), flush=True)
    print(f"mesh up; logs in {sup.log_dir}; Ctrl-C stops it", flush=True)
    dead = await sup.watch(stop)
    if dead is not None:
        print(f"agentmesh up: {sup.death_report(dead)}", file=sys.stderr)
    await sup.stop()
    print("mesh stopped", flush=True)
    return 1 if dead is not None else 0
