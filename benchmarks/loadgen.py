"""The gRPC load generator, in its own process: a closed loop of ``concurrency`` callers, or an open
loop at a fixed rate (``openloop.py``).

The parent drives it over a pipe, one round at a time, so rounds of different variants can be
interleaved against warm connections. Each round reads the servers' CPU time (``/proc``) right
when the callers start and right after they stop; a closed-loop round reports latency percentiles,
a fixed-rate round every latency (the parent pools and compares them).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Literal

import grpc

from agentmesh.configfile import load_config
from agentmesh.runtime.channel import secure_channel
from agentmesh.runtime.credentials import AgentIdentity
from agentmesh.runtime.node import MeshNode
from agentmesh.v1 import agent_pb2_grpc
from benchmarks import timing
from benchmarks.echo import request
from benchmarks.meshdir import CLIENT, apply_tweaks
from benchmarks.openloop import FixedRateResult, attempt, fixed_rate_round, percentile
from benchmarks.procs import cpu_seconds

__all__ = ["FixedRateResult", "GrpcTarget", "LoadGenerator", "LoadgenSpec", "RoundResult", "percentile"]

CALL_TIMEOUT = 30.0
FIXED_RATE_TIMEOUT = 5.0  # the deadline of each call of a fixed-rate round (a late call counts as failed)
Caller = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class GrpcTarget:
    kind: Literal["insecure", "mtls", "mesh"]
    address: str = ""  # insecure / mtls: where the server listens
    agent: str = ""  # mtls: the server name to verify; mesh: the agent to call through MeshNode.stub


@dataclass(frozen=True, slots=True)
class LoadgenSpec:
    config_path: str
    targets: dict[str, GrpcTarget]
    check_every: float = 1.0  # the client identity's file check interval (rotation uses a short one)
    tweaks: tuple[str, ...] = ()  # meshdir.apply_tweaks on the client's config


@dataclass(frozen=True, slots=True)
class FixedRateCommand:
    """One fixed-rate round, as sent over the pipe."""

    key: str
    rate: float
    seconds: float
    server_pids: tuple[int, ...]


@dataclass(slots=True)
class RoundResult:
    calls: int  # completed OK
    errors: int
    error_codes: dict[str, int]
    elapsed: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    server_cpu_s: dict[int, float]  # pid -> CPU seconds used during the round
    client_cpu_s: float
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.calls / self.elapsed if self.elapsed else 0.0


class _Clients:
    """One warm client per target, built once in the load generator process."""

    def __init__(self, spec: LoadgenSpec) -> None:
        self.spec = spec
        self.config = apply_tweaks(load_config(spec.config_path), spec.tweaks)
        self.callers: dict[str, Caller] = {}
        self.fixed_callers: dict[str, Caller] = {}  # the same calls with the fixed-rate rounds' deadline
        self.node: MeshNode | None = None
        self._channels: list[grpc.aio.Channel] = []

    async def build(self) -> None:
        req = request()
        for key, target in self.spec.targets.items():
            if target.kind == "mesh":
                node = await self._node()
                self.callers[key] = self._mesh(node, target.agent, req)
                self.fixed_callers[key] = self._mesh(node, target.agent, req, FIXED_RATE_TIMEOUT)
                continue
            if target.kind == "insecure":
                ch = grpc.aio.insecure_channel(target.address)
            else:
                identity = AgentIdentity(self.config.identity_dir(CLIENT), self.config.trust_domain)
                ch = secure_channel(identity, target.address, target.agent)
            stub = agent_pb2_grpc.AgentStub(ch)
            self.callers[key] = self._plain(stub, req)
            self.fixed_callers[key] = self._plain(stub, req, FIXED_RATE_TIMEOUT)
            self._channels.append(ch)

    async def _node(self) -> MeshNode:
        if self.node is None:
            self.node = MeshNode(self.config, CLIENT, check_every=self.spec.check_every)
            await self.node.start()
        return self.node

    @staticmethod
    def _plain(stub: agent_pb2_grpc.AgentStub, req: object, timeout: float = CALL_TIMEOUT) -> Caller:
        invoke = stub.Invoke

        def call() -> Awaitable[object]:
            started: Awaitable[object] = invoke(req, timeout=timeout)
            return started

        return call

    @staticmethod
    def _mesh(node: MeshNode, agent: str, req: object, timeout: float = CALL_TIMEOUT) -> Caller:
        stub_class = agent_pb2_grpc.AgentStub

        def call() -> Awaitable[object]:  # the way agent code calls: node.stub(name, ...) per call
            started: Awaitable[object] = node.stub(agent, stub_class).Invoke(req, timeout=timeout)
            return started

        return call

    async def close(self) -> None:
        for ch in self._channels:
            await ch.close()
        if self.node is not None:
            await self.node.close()


async def _round(clients: _Clients, key: str, seconds: float, concurrency: int,
                 server_pids: Sequence[int]) -> RoundResult:
    call = clients.callers[key]
    latencies: list[int] = []
    codes: Counter[str] = Counter()
    samples: dict[str, str] = {}  # the first error message of each code
    stop_at = time.perf_counter_ns() + int(seconds * 1e9)

    async def caller() -> None:
        while True:
            t0 = time.perf_counter_ns()
            if t0 >= stop_at:
                return
            if await attempt(call, codes, samples):
                latencies.append(time.perf_counter_ns() - t0)

    me = os.getpid()
    cpu0 = {pid: cpu_seconds(pid) for pid in server_pids}
    self0 = cpu_seconds(me)
    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu1 = {pid: cpu_seconds(pid) for pid in server_pids}
    self1 = cpu_seconds(me)
    latencies.sort()
    extra: dict[str, object] = {"error_samples": samples} if samples else {}
    if clients.node is not None:
        extra["client_identity_version"] = clients.node.identity.version
    return RoundResult(
        calls=len(latencies), errors=sum(codes.values()), error_codes=dict(codes), elapsed=elapsed,
        p50_ms=percentile(latencies, 0.50) / 1e6, p99_ms=percentile(latencies, 0.99) / 1e6,
        mean_ms=(sum(latencies) / len(latencies) / 1e6) if latencies else float("nan"),
        server_cpu_s={pid: cpu1[pid] - cpu0[pid] for pid in server_pids}, client_cpu_s=self1 - self0, extra=extra,
    )


async def _serve(conn: Connection, spec: LoadgenSpec) -> None:
    clients = _Clients(spec)
    try:
        await clients.build()
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", None))
    loop = asyncio.get_running_loop()
    try:
        while True:
            cmd = await loop.run_in_executor(None, conn.recv)
            if cmd is None:
                break
            try:
                if isinstance(cmd, FixedRateCommand):
                    result: RoundResult | FixedRateResult = await fixed_rate_round(
                        clients.fixed_callers[cmd.key], cmd.rate, cmd.seconds, cmd.server_pids,
                        timeout=FIXED_RATE_TIMEOUT)
                else:
                    result = await _round(clients, *cmd)
                conn.send(("ok", result))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    finally:
        await clients.close()


def _main(conn: Connection, spec: LoadgenSpec) -> None:
    timing.install()  # (only with AGENTMESH_BENCH_TIMING: insitu.py)
    asyncio.run(_serve(conn, spec))


class LoadGenerator:
    """The parent's handle on the load generator process."""

    def __init__(self, spec: LoadgenSpec, *, start_timeout: float = 60.0) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_main, args=(child, spec), name="agentmesh-loadgen", daemon=True)
        self.process.start()
        child.close()
        if not self._conn.poll(start_timeout):
            self.close()
            raise RuntimeError("the load generator did not start")
        status, detail = self._conn.recv()
        if status != "ready":
            self.close()
            raise RuntimeError(f"the load generator failed to start:\n{detail}")

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def run(self, key: str, seconds: float, concurrency: int, server_pids: Sequence[int] = ()) -> RoundResult:
        self._conn.send((key, seconds, concurrency, tuple(server_pids)))
        status, result = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"load generator round failed:\n{result}")
        assert isinstance(result, RoundResult)
        return result

    def run_fixed(self, key: str, rate: float, seconds: float, server_pids: Sequence[int] = ()) -> FixedRateResult:
        """One open-loop round: ``rate`` calls per second for ``seconds`` (``openloop.py``)."""
        self._conn.send(FixedRateCommand(key, rate, seconds, tuple(server_pids)))
        status, result = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"load generator round failed:\n{result}")
        assert isinstance(result, FixedRateResult)
        return result

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self._conn.close()
