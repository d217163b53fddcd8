"""The whole server chain and the whole client chain, in-process, without a network or gRPC core.

The server chain is driven the way grpc.aio drives server interceptors (each ``intercept_service``
gets a continuation to the next, then the returned handler is called) with a stand-in servicer
context that answers ``auth_context()`` with the client's certificate; the client chain gets a
continuation returning an already finished call. What is left is agentmesh's own Python per call:
deterministic, so a change to the chain shows here first, free of the load test's noise.

Each chain is timed twice: the caller's time per call, and the process CPU per call including
the audit exporter thread (spans flushed at the end), which is what a server pays. The cost of
recording the metrics is measured on the same chains (``metricscost.py``).
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
from opentelemetry import trace

from agentmesh.audit import inject
from agentmesh.interceptors.chain import server_chain
from agentmesh.interceptors.client import ClientSteps
from agentmesh.runtime.node import MeshNode
from agentmesh.runtime.tokensource import AgentTokenSource
from agentmesh.tokens import KeySet, TokenAuthority
from agentmesh.v1 import agent_pb2
from benchmarks.echo import METHOD, Echo, request
from benchmarks.meshdir import AGENT, CLIENT, BenchMesh, trust_snapshot
from benchmarks.metricscost import measure_metrics_cost

__all__ = ["run_chain_micro"]


class _Details:
    """grpc.HandlerCallDetails as grpc.aio passes it to server interceptors."""

    __slots__ = ("invocation_metadata", "method")

    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


class _Context:
    """The parts of grpc.aio.ServicerContext the chain uses, answering like a verified mTLS call."""

    def __init__(self, pem: bytes, spiffe_id: str) -> None:
        self._auth = {"transport_security_type": [b"ssl"], "x509_pem_cert": [pem],
                      "x509_subject_alternative_name": [spiffe_id.encode()],
                      "security_level": [b"TSI_PRIVACY_AND_INTEGRITY"]}

    def auth_context(self) -> dict[str, list[bytes]]:
        return dict(self._auth)  # grpc builds a fresh mapping per call

    def time_remaining(self) -> float:
        return 30.0

    def peer(self) -> str:
        return "ipv4:127.0.0.1:51234"  # one client connection

    def code(self) -> None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        raise RuntimeError(f"the benchmark call was refused: {code.name} {details}")


async def _run_interceptors(interceptors: Iterator[Any], query: Callable[[Any], Any], details: _Details) -> Any:
    """grpc.aio's server interceptor recursion (``_run_interceptor`` in aio/server.pyx.pxi)."""
    interceptor = next(interceptors, None)
    if interceptor is None:
        return query(details)
    return await interceptor.intercept_service(functools.partial(_run_interceptors, interceptors, query), details)


class _FinishedCall:
    """What the client chain's continuation returns: a unary call that already ended OK."""

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        callback(self)

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK


async def _continuation(details: grpc.aio.ClientCallDetails, req: Any) -> _FinishedCall:
    return _FinishedCall()


async def _time(call: Callable[[], Awaitable[object]], seconds: float,
                flush: Callable[[], object]) -> tuple[float, float]:
    """(median caller us per call over 5 batches, process CPU us per call including export)."""
    n = 1
    while True:  # calibrate on >= 5 ms
        t0 = time.perf_counter_ns()
        for _ in range(n):
            await call()
        await asyncio.sleep(0)
        if time.perf_counter_ns() - t0 > 5_000_000 or n >= 100_000:
            break
        n *= 2
    per = (time.perf_counter_ns() - t0) / n
    size = max(1, min(2000, int(seconds * 1e9 / 5 / per)))  # below the audit queue, flushed per batch
    walls = []
    cpu0 = time.process_time()
    total = 0
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(size):
            await call()
        await asyncio.sleep(0)  # ends the client spans the done callbacks scheduled
        walls.append((time.perf_counter_ns() - t0) / size / 1e3)
        total += size
        flush()
    return statistics.median(walls), (time.process_time() - cpu0) / total * 1e6


async def _measure(mesh: BenchMesh, seconds: float) -> dict[str, Any]:
    config = mesh.config
    authority = TokenAuthority.load(config.ca_dir, issuer=config.tokens.issuer)
    server = MeshNode(config, AGENT)
    client = MeshNode(config, CLIENT)
    try:
        server.verifier.keys = KeySet.from_authority(authority)  # what node.start() fetches from the control
        server.trust.update(trust_snapshot(config))  # and the trust data (revocations) it streams
        peer_id = str(client.spiffe_id)
        token = authority.issue(sub=peer_id, roles=list(config.agent(CLIENT).roles), audience=config.tokens.audience,
                                ttl=3600, cnf_thumbprint=client.identity.thumbprint)
        chain = server_chain(AGENT, sink=server.sink, audit_required=config.audit.required,
                             identities=server.identities, checks=server.checks,
                             snapshot=lambda: server.trust.snapshot, policy=server.policy,
                             limiter=server.limiter, guard=server.guard, me=str(server.spiffe_id))
        echo = Echo()
        handler = grpc.unary_unary_rpc_method_handler(echo.Invoke, agent_pb2.Task.FromString,
                                                      agent_pb2.TaskResult.SerializeToString)
        md: list[tuple[str, str]] = [("authorization", f"Bearer {token}"),
                                     ("user-agent", f"grpc-python-asyncio/{grpc.__version__}")]
        parent = client.sink.tracer.start_span(METHOD)
        inject(md, trace.set_span_in_context(parent))  # a traceparent, as the client chain sends it
        metadata = tuple(md)
        context = _Context(client.identity.leaf_pem, peer_id)
        req = request()

        def query(details: _Details) -> grpc.RpcMethodHandler:
            return handler

        async def bare() -> object:
            return await handler.unary_unary(req, context)

        async def served() -> object:
            h = await _run_interceptors(iter(chain), query, _Details(METHOD, metadata))
            return await h.unary_unary(req, context)

        async def fetch() -> tuple[str, float]:
            return token, time.time() + 3600

        steps = ClientSteps(CLIENT, AGENT, AgentTokenSource(fetch), client.sink.tracer)

        async def called() -> object:  # what a mesh channel does around a call (runtime/channel.py)
            md, timeout, span = await steps.prepare(METHOD, None, 30.0)
            call = await _continuation(grpc.aio.ClientCallDetails(METHOD.encode(), timeout, md, None, None), req)
            steps.end_when_done(call, span)
            return call

        await served()  # caches: handler wrappers, peer identity, verified token
        await called()
        bare_wall, bare_cpu = await _time(bare, seconds, lambda: None)
        srv_wall, srv_cpu = await _time(served, seconds, lambda: server.sink.force_flush(10))
        cli_wall, cli_cpu = await _time(called, seconds, lambda: client.sink.force_flush(10))
        n = max(50, min(2000, int(seconds * 1e6 / 10 / max(srv_wall, 1.0))))
        metrics_cost = await measure_metrics_cost(served, called, server.sink, client.sink, n)
        parent.end()
        return {
            "handler_alone_us": bare_wall,
            "server_chain_us": srv_wall - bare_wall,
            "server_chain_cpu_us_incl_export": srv_cpu - bare_cpu,
            "client_chain_us": cli_wall,
            "client_chain_cpu_us_incl_export": cli_cpu,
            "metrics_cost": metrics_cost,
        }
    finally:
        await server.close()
        await client.close()


def run_chain_micro(mesh: BenchMesh, seconds: float) -> dict[str, Any]:
    return asyncio.run(_measure(mesh, seconds))
