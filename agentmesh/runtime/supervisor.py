"""``agentmesh up``: the control plane, every agent and the bridge as supervised child processes.

Start: the control plane first, then the agents (together), then the bridge, each awaited until healthy
(gRPC health over mutual TLS; the bridge's ``/healthz``). A child that fails while the mesh starts stops
it: that is a config or code error, which a restart would only repeat.

Running: a child that exits unasked is restarted with exponential backoff, announced in one line (which
child, its exit status or signal, the last line of its log, the delay); a child that keeps crashing
(:class:`~agentmesh.runtime.supervision.RestartPolicy`) stops the mesh and ``up`` exits non-zero with one
line saying so.

Stop (SIGINT/SIGTERM): in order, each member given ``grace_period`` to drain its calls in flight: the
bridge first, then the agents from the edge inward
(:func:`~agentmesh.runtime.supervision.stop_waves`), the control plane last; whatever has not exited
``STOP_MARGIN`` seconds after its grace period is killed. A second signal kills the rest at once.

Children die with ``up`` even when it is killed with SIGKILL (:mod:`agentmesh.runtime.tether`). Each run
logs into a fresh directory (:mod:`agentmesh.runtime.runlogs`), so "last log lines" come from this run.

Metrics: ``up`` binds each member's metrics socket (a free port each when the config names none) and hands
it to every incarnation of the child (:mod:`agentmesh.runtime.children`); the table and ``run.json`` say where.

A member without an identity yet joins: ``up`` runs beside the CA (it starts the control plane), so it
makes a one-time join token for that member and hands it to the child on stdin (``--join -``); the
child makes its own key and sends only a CSR (``control.join_address`` must be set).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from agentmesh.a2a.cards import public_url
from agentmesh.audit.prom import METRICS_ADDRESS_ENV, METRICS_FD_ENV
from agentmesh.config import MeshConfig
from agentmesh.errors import ConfigError, MeshError, Unavailable
from agentmesh.pki.join import JoinTokens
from agentmesh.runtime.channel import secure_channel
from agentmesh.runtime.children import Child, exit_text
from agentmesh.runtime.credentials import AgentIdentity
from agentmesh.runtime.healthcheck import SERVING, grpc_health, http_healthz
from agentmesh.runtime.runlogs import KEEP_RUNS, RunLogs
from agentmesh.runtime.supervision import CrashHistory, RestartPolicy, listen_ports, metrics_addresses, stop_waves

__all__ = ["STOP_MARGIN", "Child", "Supervisor", "exit_text", "run_up"]

#: seconds a stopping child may take beyond its grace period (closing its node, flushing audit) before SIGKILL
STOP_MARGIN = 5.0
_POLL = 0.1


class Supervisor:
    def __init__(self, config: MeshConfig, config_path: Path, *, log_dir: Path | None = None,
                 with_bridge: bool = True, start_timeout: float = 30.0, restart: RestartPolicy | None = None,
                 keep_runs: int = KEEP_RUNS, out: TextIO | None = None, err: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, metrics: bool = True) -> None:
        self.config = config
        self.config_path = config_path
        self.log_root = log_dir or config.ca_dir.parent / "logs"
        self.start_timeout = start_timeout
        self.restart = restart or RestartPolicy()
        self.keep_runs = keep_runs
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.clock = clock
        cfg = ["--config", str(config_path)]
        self.children = [Child(config.control.name, "control", config.control.address, ["control", *cfg],
                               Path())]
        for name, agent in config.agents.items():
            self.children.append(Child(name, "agent", agent.address, ["agent", name, *cfg], Path()))
        if with_bridge:
            b = config.bridge
            self.children.append(Child(b.name, "bridge", b.listen, ["bridge", *cfg], Path()))
        where = metrics_addresses(config, [c.name for c in self.children], auto=metrics)
        for child in self.children:
            child.history = CrashHistory(self.restart)
            child.metrics = where[child.name]
        self.run: RunLogs | None = None
        self.stop_requested = asyncio.Event()  # a signal (or the caller) asked the mesh to stop
        self.hurry = asyncio.Event()  # a second signal: kill what is still running
        self.state = "starting"
        self._probe_identity: AgentIdentity | None = None
        self._lifeline: tuple[int, int] | None = None  # (read end handed to children, write end held here)

    @property
    def log_dir(self) -> Path:
        """This run's log directory."""
        return self.run.dir if self.run is not None else self.log_root

    def request_stop(self) -> None:
        """What SIGINT/SIGTERM do: the first asks for an ordered stop, the next one hurries it."""
        (self.hurry if self.stop_requested.is_set() else self.stop_requested).set()

    # ------------------------------------------------------------------ start / health
    async def start(self) -> None:
        """Starts every child, each awaited until healthy; returns early if a stop is requested meanwhile.
        A child that fails stops the mesh (:class:`Unavailable`, with its last log lines)."""
        try:
            ports = listen_ports(self.config)
            for child in self.children:
                child.listen_metrics(ports)
        except ConfigError:
            await self.stop()
            raise
        self.run = RunLogs.create(self.log_root, [c.name for c in self.children], keep=self.keep_runs)
        for child in self.children:
            child.log_path = self.run.log(child.name)
        self._probe_identity = AgentIdentity(self.config.identity_dir(self.config.control.name),
                                             self.config.trust_domain)
        if self._lifeline is None:
            self._lifeline = os.pipe()  # both ends non-inheritable; the read end is passed explicitly
        groups = [[c for c in self.children if c.kind == kind] for kind in ("control", "agent", "bridge")]
        try:
            for group in groups:
                if self.stop_requested.is_set():
                    break
                for child in group:
                    await self._spawn(child)
                results = await asyncio.gather(*(self._wait_healthy(c) for c in group), return_exceptions=True)
                self._save()
                for failed in results:
                    if isinstance(failed, BaseException):
                        raise failed
        except BaseException:
            await self.stop()
            raise
        if not self.stop_requested.is_set():
            self.state = "up"
            self._save()

    def _join_token(self, child: Child) -> str | None:
        """A one-time join token for a member that has no identity yet (None: it has one)."""
        directory = self.config.identity_dir(child.name)
        if child.kind == "control" or (directory / "cert.pem").exists():
            return None
        if not self.config.control.join_address:
            raise ConfigError(f"{child.label} has no identity in {directory}: onboard it (agentmesh cert "
                              "issue) or set control.join_address so that 'up' joins it")
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        bundle = directory / "bundle.pem"
        if not bundle.exists():  # public: what the member verifies the control plane with
            bundle.write_bytes((self.config.ca_dir / "bundle.pem").read_bytes())
        dns = ("localhost",) if child.kind == "bridge" else ()
        return JoinTokens(self.config.ca_dir).create(child.name, ttl=300.0, dns=dns)

    def _argv(self, child: Child, join: bool) -> list[str]:
        assert self._lifeline is not None
        tether = ["--parent", str(os.getpid()), "--lifeline", str(self._lifeline[0]),
                  "--grace", f"{self.config.grace_period:g}"]
        return [sys.executable, "-m", "agentmesh.runtime.tether", *tether, "--", *child.args,
                *(["--join", "-"] if join else [])]

    async def _spawn(self, child: Child) -> None:
        token = self._join_token(child)
        assert self._lifeline is not None
        # never up's own metrics handoff (a stale one, from the shell): only the child's, or none
        inherited = {k: v for k, v in os.environ.items() if k not in (METRICS_ADDRESS_ENV, METRICS_FD_ENV)}
        env = {**inherited, "PYTHONUNBUFFERED": "1", "GRPC_VERBOSITY": os.environ.get("GRPC_VERBOSITY", "ERROR"),
               **child.metrics_env()}
        with open(child.log_path, "ab") as log:  # handed to the child; closed here once it has it
            if child.restarts:
                log.write(f"--- agentmesh up: restart {child.restarts} at {time.strftime('%H:%M:%S')} ---\n"
                          .encode())
            child.log_start = log.tell()
            child.proc = await asyncio.create_subprocess_exec(
                *self._argv(child, token is not None), stdout=log, stderr=log, env=env,
                stdin=asyncio.subprocess.PIPE if token else asyncio.subprocess.DEVNULL,
                start_new_session=True, cwd=os.getcwd(), pass_fds=(self._lifeline[0], *child.fds))
        if token and child.proc.stdin is not None:
            child.proc.stdin.write(token.encode() + b"\n")  # never on a command line, where ps shows it
            await child.proc.stdin.drain()
            child.proc.stdin.close()
        child.status = "starting"

    async def _healthy(self, child: Child) -> bool:
        if child.kind == "bridge":
            bundle = self.config.identity_dir(child.name) / "bundle.pem" if self.config.bridge.tls else None
            return await http_healthz(child.address, bundle=bundle)
        assert self._probe_identity is not None
        ch = secure_channel(self._probe_identity, child.address, child.name)
        try:
            return await grpc_health(ch, timeout=1) == SERVING
        finally:
            await ch.close()

    async def _wait_healthy(self, child: Child) -> None:
        """Until ``child`` answers healthy (or a stop is requested); :class:`Unavailable` if it exits or
        stays unhealthy for ``start_timeout``."""
        deadline = self.clock() + self.start_timeout
        while self.clock() < deadline and not self.stop_requested.is_set():
            assert child.proc is not None
            if child.proc.returncode is not None:
                child.status = f"exited ({exit_text(child.proc.returncode)})"
                child.last_exit = child.proc.returncode
                raise Unavailable(self.death_report(child))
            if await self._healthy(child):
                child.status = "healthy"
                return
            await asyncio.sleep(_POLL)
        if self.stop_requested.is_set():
            return
        child.status = "unhealthy"
        raise Unavailable(f"{child.label} not healthy within {self.start_timeout:.0f}s\n"
                          + "\n".join(f"    {line}" for line in child.last_lines()))

    def death_report(self, child: Child) -> str:
        code = child.proc.returncode if child.proc else None
        lines = "\n".join(f"    {line}" for line in child.last_lines())
        return f"{child.label} exited ({exit_text(code)}); last log lines ({child.log_path}):\n{lines}"

    # ------------------------------------------------------------------ supervise
    def table(self) -> str:
        rows = [("NAME", "KIND", "SPIFFE ID", "ADDRESS", "METRICS", "STATUS")]
        for c in self.children:
            rows.append((c.name, c.kind, str(self.config.spiffe_id(c.name)), c.address, c.metrics or "-", c.status))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)

    async def supervise(self) -> str | None:
        """Keeps every child running until a stop is requested (None) or one keeps crashing (the line
        that says so; the mesh is then to be stopped)."""
        keepers = [asyncio.ensure_future(self._keep(c)) for c in self.children]
        requested = asyncio.ensure_future(self.stop_requested.wait())
        pending: set[asyncio.Future[Any]] = {requested, *keepers}
        gave_up: str | None = None
        while gave_up is None and not self.stop_requested.is_set():
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            gave_up = next((f.result() for f in keepers if f in done and f.result() is not None), None)
        self.stop_requested.set()  # the keepers still running see it and return
        await asyncio.gather(*keepers)
        requested.cancel()
        return gave_up

    async def _keep(self, child: Child) -> str | None:
        """Restarts ``child`` whenever it exits unasked; the give-up line when it keeps crashing."""
        while child.proc is not None:
            stopping = asyncio.ensure_future(self.stop_requested.wait())
            exited = asyncio.ensure_future(child.proc.wait())
            await asyncio.wait({stopping, exited}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if self.stop_requested.is_set():
                exited.cancel()
                return None
            code = child.proc.returncode
            child.last_exit = code
            delay = child.history.crashed(self.clock())
            policy = self.restart
            last = child.last_line()
            if delay is None:
                child.status = f"gave up ({exit_text(code)})"
                self._save()
                return (f"{child.label} keeps crashing ({child.history.recent} crashes within "
                        f"{policy.window:g}s; last: {exit_text(code)}, last log line: {last!r}; log: "
                        f"{child.log_path}); stopping the mesh")
            child.status = f"restarting ({exit_text(code)})"
            self._save()
            print(f"agentmesh up: {child.label} exited ({exit_text(code)}); last log line: {last!r}; "
                  f"restarting in {delay:g}s (crash {child.history.recent} of {policy.max_crashes} within "
                  f"{policy.window:g}s)", file=self.err, flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), delay)
            if self.stop_requested.is_set():
                return None
            child.restarts += 1
            try:
                await self._spawn(child)
            except (MeshError, OSError) as e:  # e.g. its identity directory went away meanwhile
                child.status = "gave up"
                return f"{child.label} cannot be restarted: {getattr(e, 'message', None) or e}; stopping the mesh"
            try:
                await self._wait_healthy(child)
            except Unavailable:
                if child.running:  # alive but not healthy in time: counts as a crash
                    self._kill(child)
                    await child.proc.wait()
                continue
            if child.status == "healthy":
                self._save()
                print(f"agentmesh up: {child.label} is healthy again (restart {child.restarts})",
                      file=self.out, flush=True)
        return None

    # ------------------------------------------------------------------ stop
    def stop_plan(self) -> list[list[Child]]:
        """Waves of children to stop one after the other: bridge, agents from the edge inward, control."""
        by_name = {c.name: c for c in self.children if c.kind == "agent"}
        plan = [[c for c in self.children if c.kind == "bridge"]]
        plan += [[by_name[n] for n in wave if n in by_name] for wave in stop_waves(self.config)]
        plan.append([c for c in self.children if c.kind == "control"])
        return [wave for wave in plan if wave]

    def _kill(self, child: Child) -> None:
        assert child.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.proc.pid, signal.SIGKILL)  # its session: anything it started goes too

    async def stop(self, grace: float | None = None) -> None:
        """Stops every child in :meth:`stop_plan` order, each given ``grace`` (``grace_period``) to drain."""
        grace = self.config.grace_period if grace is None else grace
        self.stop_requested.set()
        self.state = "stopping"
        self._save()
        for wave in self.stop_plan():
            running = [c for c in wave if c.running]
            for c in running:
                assert c.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    c.proc.send_signal(signal.SIGTERM)
                c.status = "stopping"
            await asyncio.gather(*(self._reap(c, grace + STOP_MARGIN) for c in running))
        for c in self.children:  # any not in the plan (none today), and every pipe closed
            if c.running:
                self._kill(c)
                assert c.proc is not None
                await c.proc.wait()
        if self._lifeline is not None:
            for fd in self._lifeline:
                os.close(fd)
            self._lifeline = None
        for c in self.children:
            c.close_metrics()
        self.state = "stopped"
        self._save()

    async def _reap(self, child: Child, timeout: float) -> None:
        assert child.proc is not None
        exited = asyncio.ensure_future(child.proc.wait())
        hurry = asyncio.ensure_future(self.hurry.wait())
        await asyncio.wait({exited, hurry}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        hurry.cancel()
        if not exited.done():
            self._kill(child)
            await exited
        child.status = "stopped"

    def _save(self) -> None:
        if self.run is None:
            return
        with contextlib.suppress(OSError):
            self.run.write_state({"run": self.run.run_id, "pid": os.getpid(), "config": str(self.config_path),
                                  "state": self.state, "grace_period": self.config.grace_period,
                                  "children": [c.state() for c in self.children]})


async def run_up(config: MeshConfig, config_path: Path, *, with_bridge: bool = True,
                 restart: RestartPolicy | None = None, keep_runs: int = KEEP_RUNS, metrics: bool = True) -> int:
    sup = Supervisor(config, config_path, with_bridge=with_bridge, restart=restart, keep_runs=keep_runs,
                     metrics=metrics)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, sup.request_stop)
    try:
        await sup.start()
    except MeshError as e:
        print(f"agentmesh up: {e.message}", file=sys.stderr)
        return 1
    gave_up = None
    try:
        if not sup.stop_requested.is_set():
            print(sup.table(), flush=True)
            with contextlib.suppress(ConfigError):  # a wildcard listen address without public_url names no URL
                if with_bridge:  # the name its certificate carries (localhost for loopback), not 127.0.0.1
                    print(f"bridge at {public_url(config.bridge)}", flush=True)
            if any(c.metrics for c in sup.children):  # top finds the addresses in this run's run.json
                print(f"live view: agentmesh top {shlex.quote(str(config_path))}", flush=True)
            print(f"mesh up; logs in {sup.log_dir}; Ctrl-C stops it", flush=True)
            gave_up = await sup.supervise()
        if gave_up is not None:
            print(f"agentmesh up: {gave_up}", file=sys.stderr, flush=True)
        order = " -> ".join(", ".join(c.name for c in wave) for wave in sup.stop_plan())
        print(f"stopping: {order} (each drains up to {config.grace_period:g}s; Ctrl-C again stops at once)",
              flush=True)
    finally:
        await sup.stop()  # also when supervising failed unexpectedly: no child is left behind
    print("mesh stopped", flush=True)
    return 1 if gave_up is not None else 0
