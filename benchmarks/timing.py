"""Thread CPU of each part of the chains, measured inside the real processes under load (``insitu.py``).

The in-process micro-benchmarks (``micro.py``, ``chainbench.py``) run the chain's code hot in a loop; in a
serving process the same code runs between gRPC's and the event loop's, with cold caches, and costs 2-5x as
much. This module wraps the chain's parts (server and client) so that each call of a part adds its thread
CPU time (``time.thread_time_ns``) to a counter: exact for the parts that do not await (every part timed
here, in the steady state: the handler is an echo, the limiter in memory), a wrapper's own cost (~1-2 us)
included. The audit export is timed per span, in its thread.

``install()`` is called by ``serve.py`` and ``loadgen.py`` when ``AGENTMESH_BENCH_TIMING`` names a directory;
on SIGUSR1 the process writes ``timing-<pid>.json`` there: the counters, and its threads (native id, name)
so their CPU in ``/proc`` can be named.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ENV", "install"]

ENV = "AGENTMESH_BENCH_TIMING"
_counts: dict[str, list[int]] = {}  # part -> [thread CPU ns, calls]


def _add(part: str, ns: int, n: int = 1) -> None:
    c = _counts.get(part)
    if c is None:
        c = _counts[part] = [0, 0]
    c[0] += ns
    c[1] += n


def _timed(part: str, fn: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
    now = time.thread_time_ns
    if is_async:
        async def timed_async(*a: Any, **k: Any) -> Any:
            t0 = now()
            try:
                return await fn(*a, **k)
            finally:
                _add(part, now() - t0)

        return functools.wraps(fn)(timed_async)

    def timed(*a: Any, **k: Any) -> Any:
        t0 = now()
        try:
            return fn(*a, **k)
        finally:
            _add(part, now() - t0)

    return functools.wraps(fn)(timed)


def _wrap(owner: Any, name: str, part: str, is_async: bool = False) -> None:
    setattr(owner, name, _timed(part, getattr(owner, name), is_async))


def _install_wrappers() -> None:
    from agentmesh.audit import exportqueue, fastspan
    from agentmesh.audit import metrics as audit_metrics
    from agentmesh.interceptors import audit, auth, base, client, limits
    from agentmesh.runtime import facade, node

    # server: the whole call (_serve), the hook grpc.aio calls first, then each stage
    _wrap(base.ServerChain, "intercept_service", "server: intercept_service", True)
    _wrap(base.ServerChain, "_serve", "server: _serve (the whole call, handler included)", True)
    _wrap(audit.AuditStage, "start", "server:   audit start (traceparent, span, context)")
    _wrap(audit, "remote_parent", "server:     remote_parent (traceparent)")
    _wrap(audit.AuditStage, "finish", "server:   audit finish (attributes, span end, metrics)")
    _wrap(auth.AdmissionStage, "before", "server:   admission (certificate, tokens, policy)", True)
    _wrap(auth, "peer_pem", "server:     auth_context() (the peer certificate)")
    _wrap(limits.RateLimitStage, "before", "server:   rate limit", True)
    _wrap(limits.PayloadGuardStage, "before", "server:   payload guard", True)
    # client: the stub layer's steps
    _wrap(node.MeshNode, "stub", "client: MeshNode.stub")
    _wrap(facade._ChainedCallable, "_start", "client: _start (the call started, grpc.aio's included)")
    _wrap(facade._ChainedCallable, "_connection", "client:   connection (revocation, rotation, server check)")
    _wrap(client.ClientSteps, "_build", "client:   steps (token, metadata, span, traceparent)")
    _wrap(client, "_end", "client: span end (done callback)")
    # both: ending a span, its metrics, its export (per span, in the export thread)
    _wrap(fastspan.FastSpan, "end", "both: span.end (queued for export)")
    _wrap(audit_metrics.AuditMetrics, "record_server", "both: metrics of a server call")
    _wrap(audit_metrics.AuditMetrics, "record_client", "both: metrics of a client call")
    export = exportqueue.ExportQueue._export
    now = time.thread_time_ns

    def timed_export(self: exportqueue.ExportQueue, batch: list[Any]) -> bool:
        t0 = now()
        try:
            return export(self, batch)
        finally:
            spent = now() - t0
            _add("export thread: per span", spent, len(batch))
            _add("export thread: per slice", spent)

    exportqueue.ExportQueue._export = timed_export  # type: ignore[method-assign]


def _dump(directory: Path) -> None:
    threads = {str(t.native_id): t.name for t in threading.enumerate() if t.native_id is not None}
    doc = {"pid": os.getpid(), "threads": threads, "main": str(threading.main_thread().native_id),
           "parts": {part: {"ns": ns, "calls": n} for part, (ns, n) in _counts.items()}}
    tmp = directory / f".timing-{os.getpid()}.json"
    tmp.write_text(json.dumps(doc))
    tmp.replace(directory / f"timing-{os.getpid()}.json")


def install() -> bool:
    """Wraps the chain's parts and answers SIGUSR1 with a dump, when ``$AGENTMESH_BENCH_TIMING`` is set."""
    where = os.environ.get(ENV)
    if not where:
        return False
    directory = Path(where)
    _install_wrappers()
    signal.signal(signal.SIGUSR1, lambda *_: _dump(directory))
    return True
