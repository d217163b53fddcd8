"""How long a revocation takes to reach the mesh, with default settings (the control plane polls the CA
directory every ``POLL`` s and pushes at once).

In one process, over real sockets: the control plane (``start_control``), the echo agent as a
``MeshNode`` serving a handler that holds streams open, and, per trial, a fresh member (``victim-N``)
that has made a call and holds a server stream open to the agent. Then the kill switch as
``revoke-agent`` does it (``ca.revoke`` + ``ca.block``), and from the moment those writes are done:

    observer_refuses  the agent's trust data names the victim (``node.trust.member_revoked``)
    call_refused      a new call from the victim (one every few ms) fails
    stream_cut        the stream the victim holds open is ended by the agent

A trial's propagation time is the latest of the three. Each trial revokes a different member, at a
random moment of the control plane's poll cycle.
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc

from agentmesh.errors import MeshError
from agentmesh.pki import CertificateAuthority
from agentmesh.runtime.control import start_control
from agentmesh.runtime.node import MeshNode
from agentmesh.runtime.publisher import POLL
from agentmesh.v1 import agent_pb2, agent_pb2_grpc
from benchmarks.echo import Echo, request
from benchmarks.meshdir import AGENT, BenchMesh, create_mesh

__all__ = ["MEASURES", "run_propagation"]

MEASURES = ("observer_refuses", "call_refused", "stream_cut")
TIMEOUT = 10.0  # per trial: a measure not seen by then is reported as missing


class Holding(Echo):
    """Echo, except that a stream stays open after its first event until something ends it."""

    async def InvokeStream(self, request: agent_pb2.Task,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.TaskEvent]:
        yield agent_pb2.TaskEvent(task_id=request.id, progress="open")
        await asyncio.Event().wait()


async def _trial(mesh: BenchMesh, observer: MeshNode, victim: str) -> dict[str, float | None]:
    node = MeshNode(mesh.config, victim)
    await node.start()
    try:
        stub = node.stub(AGENT, agent_pb2_grpc.AgentStub)
        await stub.Invoke(request(), timeout=5)
        stream = stub.InvokeStream(request())
        await stream.read()  # the stream is open
        await asyncio.sleep(random.uniform(0, POLL))  # a random phase of the control plane's poll cycle
        ca = CertificateAuthority.load(mesh.config.ca_dir)
        ca.revoke(victim, reason="propagation benchmark", by="bench")  # what revoke-agent writes
        ca.block(victim, reason="propagation benchmark", by="bench")
        t0 = time.perf_counter()
        seen: dict[str, float | None] = dict.fromkeys(MEASURES)

        async def observer_refuses() -> None:
            while not observer.trust.member_revoked(victim):
                await asyncio.sleep(0.002)
            seen["observer_refuses"] = time.perf_counter() - t0

        async def call_refused() -> None:
            while True:
                try:
                    await stub.Invoke(request(), timeout=2)
                except (grpc.aio.AioRpcError, MeshError):  # refused by the agent, or by the victim's own client
                    seen["call_refused"] = time.perf_counter() - t0
                    return
                await asyncio.sleep(0.005)

        async def stream_cut() -> None:
            try:
                await stream.read()  # only ends when the agent ends the stream
            except grpc.aio.AioRpcError:
                pass
            except asyncio.CancelledError:  # what grpc.aio raises when the call's channel is closed under it
                if (me := asyncio.current_task()) is not None and me.cancelling():
                    raise
            seen["stream_cut"] = time.perf_counter() - t0

        waits = [asyncio.ensure_future(f()) for f in (observer_refuses, call_refused, stream_cut)]
        await asyncio.wait(waits, timeout=TIMEOUT)
        for w in waits:
            w.cancel()
        stream.cancel()
        return seen
    finally:
        await node.close()


def _summary(values: list[float | None]) -> dict[str, Any]:
    real = [v for v in values if v is not None]
    return {"median_s": statistics.median(real) if real else None, "max_s": max(real) if real else None,
            "missing": len(values) - len(real)}


async def _run(mesh: BenchMesh, trials: int, log: Callable[[str], object]) -> list[dict[str, float | None]]:
    logging.getLogger("agentmesh").setLevel(logging.ERROR)  # "ended 1 call(s) in flight ..." is what we measure
    control = await start_control(mesh.config)
    observer = MeshNode(mesh.config, AGENT)
    server = None
    try:
        await observer.start()
        server = observer.server()
        server.add(agent_pb2_grpc.add_AgentServicer_to_server, Holding(), "agentmesh.v1.Agent")
        await server.start(observer.address)
        out = []
        for i in range(trials):
            seen = await _trial(mesh, observer, f"victim-{i + 1}")
            out.append(seen)
            log("  trial {}: {}".format(i + 1, ", ".join(
                f"{k} {'-' if v is None else f'{v * 1000:.0f} ms'}" for k, v in seen.items())))
        return out
    finally:
        if server is not None:
            await server.stop(0)
        await observer.close()
        await control.stop(0)
        control.sink.shutdown(2)


def run_propagation(workdir: Path, *, trials: int = 7, log: Callable[[str], object] = print) -> dict[str, Any]:
    victims = [f"victim-{i + 1}" for i in range(trials)]
    mesh = create_mesh(workdir / "propagation-mesh", callers=victims)
    try:
        results = asyncio.run(_run(mesh, trials, log))
    except Exception as e:
        return {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
    total = [None if None in r.values() else max(v for v in r.values() if v is not None) for r in results]
    return {
        "status": "ok",
        "how": "in-process, real sockets: ca.revoke + ca.block (as revoke-agent) until the measure is seen",
        "poll_s": POLL,
        "revocation": {"max_staleness": mesh.config.revocation.max_staleness,
                       "failure_mode": mesh.config.revocation.failure_mode},
        "trials": results,
        **{k: _summary([r[k] for r in results]) for k in MEASURES},
        "propagation": _summary(total),  # per trial, the latest of the three
    }
