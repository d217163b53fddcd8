"""Bounds on every phase of an HTTP connection to the bridge, below the app, in uvicorn's protocol.

uvicorn bounds none of the phases a slow client controls: it has no timeout for a request head or body,
arms its keep-alive timer only after a first response (a TLS connection that never sends a byte stays
open), bounds heads only with h11, and applies ``limit_concurrency`` after a head is read, counting the
idle and half-sent connections it never closes, so a slowloris fills it and everyone else gets 503.
Those limits need the connection's state (which phase it is in, from which address), which only the
protocol object has, so they are hand-written here as a thin subclass of each of uvicorn's HTTP
protocols, passed as ``uvicorn.Config(http=...)`` (a picklable factory, like
:class:`~agentmesh.bridge.tlsreload.ReloadingContextFactory`, so every worker builds its own state).
Replacing uvicorn was not needed: the subclass keeps its parsers and throughput
(``benchmarks/bridge_slowloris.py``).

Per connection, one deadline (one timer, re-armed lazily), by phase:

==========  ===============================================  ==========================
phase       from                                             bound
==========  ===============================================  ==========================
handshake   accept                                           ``handshake_timeout`` (the
                                                             loop's, :class:`BridgeLoop`)
idle        TLS established, or the previous response sent   ``idle_timeout``
head        the first byte of a request                      ``head_timeout`` (total);
                                                             ``max_head`` bytes
body        the head parsed                                  ``body_timeout`` (total)
app         the body read                                    the bridge's call deadline
==========  ===============================================  ==========================

Admission (:class:`ConnectionGate`, one per worker, no I/O): a connection from an address that already
has ``max_pending_per_ip`` connections without a response yet is closed at once (after the handshake,
before any HTTP work); at ``max_connections``, a new connection evicts the oldest one that is idle or
still sending its head (never one whose request is being read or served), and is closed itself if
there is none. Closing is ``transport.abort()``: no response, no queue.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["BridgeHttp", "BridgeLoop", "ConnectionGate", "ConnectionLimits"]

_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
              b"content-length: 26\r\nconnection: close\r\n\r\nrequest head is too large\n")


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    head_timeout: float = 10.0
    max_head: int = 32 * 1024
    body_timeout: float = 30.0
    idle_timeout: float = 5.0
    max_connections: int = 1024
    max_pending_per_ip: int = 64


class _Evictable(Protocol):
    def evict(self) -> None: ...


class ConnectionGate:
    """Who may hold a connection: counts per address and in all, and the eviction order (no I/O)."""

    def __init__(self, max_connections: int, max_pending_per_ip: int) -> None:
        self.max_connections = max_connections
        self.max_pending_per_ip = max_pending_per_ip
        self.open: dict[_Evictable, str] = {}  # connection -> its client address
        self.pending: dict[str, int] = {}  # address -> connections without a response yet
        self.waiting: OrderedDict[_Evictable, None] = OrderedDict()  # idle or sending a head, oldest first
        self.refused = 0
        self.evicted = 0

    def admit(self, conn: _Evictable, ip: str) -> bool:
        if self.pending.get(ip, 0) >= self.max_pending_per_ip:
            self.refused += 1
            return False
        if len(self.open) >= self.max_connections:
            if not self.waiting:
                self.refused += 1
                return False
            victim = next(iter(self.waiting))
            self.release(victim)
            self.evicted += 1
            victim.evict()
        self.open[conn] = ip
        self.pending[ip] = self.pending.get(ip, 0) + 1
        self.waiting[conn] = None
        return True

    def answered(self, conn: _Evictable) -> None:
        """``conn`` had its first response: it no longer counts against its address."""
        ip = self.open.get(conn)
        if ip is not None:
            self._unpend(ip)

    def busy(self, conn: _Evictable) -> None:
        self.waiting.pop(conn, None)

    def idle(self, conn: _Evictable) -> None:
        if conn in self.open:
            self.waiting[conn] = None
            self.waiting.move_to_end(conn)

    def release(self, conn: _Evictable, *, answered: bool = False) -> None:
        ip = self.open.pop(conn, None)
        self.waiting.pop(conn, None)
        if ip is not None and not answered:
            self._unpend(ip)

    def _unpend(self, ip: str) -> None:
        n = self.pending.get(ip, 0) - 1
        if n > 0:
            self.pending[ip] = n
        else:
            self.pending.pop(ip, None)


_Phase = Literal["idle", "head", "body", "app"]


class _Bounded:
    """The limits, over either of uvicorn's protocols (a mixin: ``super()`` is HttpToolsProtocol or H11Protocol)."""

    # what uvicorn's protocols provide
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def __init__(self, *args: Any, limits: ConnectionLimits, gate: ConnectionGate, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._limits = limits
        self._gate = gate
        self._admitted = False
        self._answered = False
        self._phase: _Phase = "idle"
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # --- the asyncio Protocol interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) else str(peer)
        if not self._gate.admit(self, ip):
            cast(asyncio.Transport, transport).abort()
            return
        self._admitted = True
        super().connection_made(transport)  # type: ignore[misc]
        self._enter("idle", self._limits.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._gate.release(self, answered=self._answered)
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._phase == "idle":
            self._enter("head", self._limits.head_timeout)
        cycle = self.cycle
        super().data_received(data)  # type: ignore[misc]
        cycle, before = self.cycle, cycle
        if cycle is None or cycle.response_complete or self.transport.is_closing():
            return
        if cycle is not before:  # a head was parsed: its request is being read or served
            self._gate.busy(self)
            if cycle.more_body:
                self._enter("body", self._limits.body_timeout)
            else:
                self._enter("app", None)
        elif self._phase == "body" and not cycle.more_body:
            self._enter("app", None)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self._answered:
            self._answered = True
            self._gate.answered(self)
        cycle = self.cycle
        if self.transport.is_closing() or (cycle is not None and not cycle.response_complete):
            return  # closing, or a pipelined request was started
        self._gate.idle(self)
        self._enter("idle", self._limits.idle_timeout)

    # --- deadlines

    def evict(self) -> None:
        self.transport.abort()

    def _enter(self, phase: _Phase, timeout: float | None) -> None:
        self._phase = phase
        if timeout is None:
            self._deadline = None
            return
        deadline = self._deadline = self.loop.time() + timeout
        if self._timer is None or deadline < self._timer_at:  # else the earlier timer fires and re-arms
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        if deadline > self.loop.time():
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._expire)
            return
        self.transport.abort()


class BoundedHttpTools(_Bounded, HttpToolsProtocol):
    """httptools, with the head's size counted here (httptools buffers a header line whole, unbounded)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._in_head = False
        self._message_done = True  # the previous message was parsed to its end
        self._head_bytes = 0

    def data_received(self, data: bytes) -> None:
        starts_clean = self._in_head or self._message_done  # then every byte until the head ends is head
        super().data_received(data)
        if self._in_head and starts_clean:
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.max_head and not self.transport.is_closing():
                self.transport.write(_TOO_LARGE)
                self.transport.close()

    def on_message_begin(self) -> None:
        self._in_head, self._message_done, self._head_bytes = True, False, 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._message_done = True
        super().on_message_complete()


class BoundedH11(_Bounded, H11Protocol):
    """h11, which bounds the head itself (``h11_max_incomplete_event_size``, set to ``max_head``)."""


class BridgeHttp:
    """uvicorn's ``http=``: a bounded protocol per connection, sharing one gate per worker process.

    Pickled to workers (``workers > 1``) as its settings only; each process builds its own gate."""

    def __init__(self, limits: ConnectionLimits, parser: Literal["httptools", "h11"] = "httptools") -> None:
        self.limits = limits
        self.parser = parser
        self._cls: type[_Bounded] = BoundedH11 if parser == "h11" else BoundedHttpTools
        self.gate = ConnectionGate(limits.max_connections, limits.max_pending_per_ip)

    def __reduce__(self) -> tuple[Any, ...]:
        return (BridgeHttp, (self.limits, self.parser))

    def __call__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
        protocol = self._cls(config=config, server_state=server_state, app_state=app_state, _loop=_loop,
                             limits=self.limits, gate=self.gate)
        return protocol  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class BridgeLoop:
    """uvicorn's ``loop=``: the event loop, its TLS servers with ``handshake_timeout`` (asyncio's is 60 s).

    uvicorn's ``Server.startup`` calls ``loop.create_server(..., ssl=...)`` with no handshake timeout;
    the loop supplies it. A loop factory is what uvicorn lets a caller choose per process."""

    handshake_timeout: float = 10.0
    uvloop: bool = True

    def __call__(self) -> asyncio.AbstractEventLoop:
        loop = _UvLoop() if self.uvloop else _AsyncioLoop()
        loop.handshake_timeout = self.handshake_timeout
        return loop


class _HandshakeBounded:
    handshake_timeout: float

    async def create_server(self, *args: Any, **kw: Any) -> Any:
        if kw.get("ssl") is not None:
            kw.setdefault("ssl_handshake_timeout", self.handshake_timeout)
        return await super().create_server(*args, **kw)  # type: ignore[misc]


class _AsyncioLoop(_HandshakeBounded, asyncio.SelectorEventLoop):
    pass


try:
    import uvloop

    class _UvLoop(_HandshakeBounded, uvloop.Loop):  # type: ignore[misc]
        pass
except ImportError:  # pragma: no cover - uvloop is optional
    _UvLoop = _AsyncioLoop  # type: ignore[misc, assignment]
