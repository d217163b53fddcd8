"""One open-loop, fixed-rate round, run inside the load generator process (``loadgen.py``).

Call ``i`` is due at ``t0 + i / rate`` whatever became of the calls before it (an open loop, as wrk2 and
fortio's ``-qps`` send), and its latency is measured from that *intended* send time: a generator or a
server that falls behind has its lateness counted, not hidden (no coordinated omission).

The due times come from a *ticker*: a small separate process (no lock of ours, so it never waits for this
process's GIL) that sleeps until each due time (``time.sleep``: tens of microseconds of slack, where a timer
of the event loop wakes up to 1 ms late on epoll) and writes it (``CLOCK_MONOTONIC`` ns, a clock every process
shares) to a socket; the event loop reads the socket and starts the calls due at once unless it is busy. How
late each call actually started is recorded too (``lag``), and the time from its actual start (``service``),
so the generator's own lateness can be told apart from the server's. The ticker's CPU is reported on its own
(``pacer_cpu_s``), outside the generator's.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc

from benchmarks.procs import cpu_seconds

__all__ = ["FixedRateResult", "fixed_rate_round", "percentile"]

Caller = Callable[[], Awaitable[object]]
START_DELAY_NS = 20_000_000  # the first call is due this long after the ticker has started
STAMP = 8  # bytes per due time on the ticker's socket
#: the ticker process: argv fd, interval (ns), calls, start delay (ns); writes each due time when it is due
TICKER = """
import os, sys, time
fd, interval, n, delay = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t0 = time.monotonic_ns() + delay
for i in range(n):
    due = t0 + round(i * interval)
    wait = due - time.monotonic_ns()
    if wait > 0:
        time.sleep(wait / 1e9)
    os.write(fd, due.to_bytes(8, "little"))
"""


def percentile(sorted_values: Sequence[int], q: float) -> float:
    """The ``q`` quantile of sorted samples (nearest rank); NaN when there are none."""
    if not sorted_values:
        return float("nan")
    return float(sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))])


@dataclass(slots=True)
class FixedRateResult:
    rate: float  # intended calls per second
    intended: int  # calls scheduled (rate x seconds)
    calls: int  # completed OK
    errors: int  # failed, or not finished within the call timeout
    error_codes: dict[str, int]
    elapsed: float  # s: from the first due time to the last completion, at least the scheduled window
    latency_ns: list[int]  # of the OK calls, from the intended send time, sorted
    service_ns: dict[str, float]  # percentiles ("p50", "p99", "max") of the time from the actual start
    lag_ns: dict[str, float]  # percentiles of (actual start - intended send time), every call
    server_cpu_s: dict[int, float]  # pid -> CPU seconds used during the round
    client_cpu_s: float  # this (generator) process, every thread
    pacer_cpu_s: float  # the ticker process
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def achieved_rps(self) -> float:
        return self.calls / self.elapsed if self.elapsed else 0.0


def _summary(values: list[int]) -> dict[str, float]:
    values.sort()
    return {"p50": percentile(values, 0.50), "p99": percentile(values, 0.99),
            "max": float(values[-1]) if values else float("nan")}


async def fixed_rate_round(call: Caller, rate: float, seconds: float, server_pids: Sequence[int], *,
                           timeout: float) -> FixedRateResult:
    """``rate x seconds`` calls of ``call`` at fixed intended times; waits for the last one (each call has
    ``timeout`` as its deadline, so the round ends at most that long after the last due time)."""
    if rate <= 0 or seconds <= 0:
        raise ValueError("rate and seconds must be positive")
    loop = asyncio.get_running_loop()
    n = max(1, round(rate * seconds))
    interval_ns = 1e9 / rate
    latency: list[int] = []
    service: list[int] = []
    lag: list[int] = []
    codes: Counter[str] = Counter()
    samples: dict[str, str] = {}  # the first error message of each code
    tasks: set[asyncio.Task[None]] = set()
    finished = asyncio.Event()
    state = {"done": 0, "last_done": 0}

    async def one(intended: int) -> None:
        started = time.monotonic_ns()
        lag.append(started - intended)
        if await attempt(call, codes, samples):
            done = time.monotonic_ns()
            latency.append(done - intended)
            service.append(done - started)
        state["last_done"] = time.monotonic_ns()

    def on_done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        state["done"] += 1
        if state["done"] == n:
            finished.set()

    rsock, wsock = socket.socketpair()
    rsock.setblocking(False)
    pending = bytearray()
    first_due: list[int] = []

    def on_ticks() -> None:  # in the event loop: start every call that is due
        try:
            data = rsock.recv(65536)
        except BlockingIOError:
            return
        if not data:  # the ticker is done
            loop.remove_reader(rsock)
            return
        pending.extend(data)
        whole = len(pending) - len(pending) % STAMP
        for i in range(0, whole, STAMP):
            intended = int.from_bytes(pending[i:i + STAMP], "little")
            if not first_due:  # the CPU window opens with the first call (not with the ticker's start-up)
                first_due.append(intended)
                cpu0.update({pid: cpu_seconds(pid) for pid in server_pids})
                cpu0[me] = cpu_seconds(me)
            task = loop.create_task(one(intended))
            tasks.add(task)
            task.add_done_callback(on_done)
        del pending[:whole]

    me = os.getpid()
    cpu0: dict[int, float] = {}
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    loop.add_reader(rsock, on_ticks)
    started = time.monotonic_ns()
    ticker = subprocess.Popen([sys.executable, "-S", "-c", TICKER, str(wsock.fileno()), str(interval_ns), str(n),
                               str(START_DELAY_NS)], pass_fds=(wsock.fileno(),))
    wsock.close()
    try:
        await asyncio.wait_for(finished.wait(), n / rate + START_DELAY_NS / 1e9 + timeout + 5.0)
    except TimeoutError:  # calls that outlived their deadline (the channel would have ended them), or no ticks
        for task in list(tasks):
            task.cancel()
        late = n - state["done"]
        codes["UNFINISHED"] += late
        samples.setdefault("UNFINISHED", f"{late} calls not finished {timeout:g} s after the last due time")
    finally:
        cpu1 = {pid: cpu_seconds(pid) for pid in (*server_pids, me)}
        loop.remove_reader(rsock)
        rsock.close()
        if not finished.is_set():
            ticker.kill()
        await asyncio.to_thread(ticker.wait, 10.0)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = first_due[0] if first_due else started
    end = max(state["last_done"], t0 + round(n * interval_ns))
    if not cpu0:  # not one tick arrived
        cpu0.update(cpu1)
    latency.sort()
    extra: dict[str, object] = {"error_samples": samples} if samples else {}
    return FixedRateResult(
        rate=rate, intended=n, calls=len(latency), errors=sum(codes.values()), error_codes=dict(codes),
        elapsed=(end - t0) / 1e9, latency_ns=latency, service_ns=_summary(service), lag_ns=_summary(lag),
        server_cpu_s={pid: cpu1[pid] - cpu0[pid] for pid in server_pids}, client_cpu_s=cpu1[me] - cpu0[me],
        pacer_cpu_s=(kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime), extra=extra,
    )


async def attempt(call: Callable[[], Awaitable[object]], codes: Counter[str], samples: dict[str, str]) -> bool:
    """Makes one call; False (and the failure counted by status, one sample message each) when it failed."""
    try:
        await call()
    except grpc.aio.AioRpcError as e:
        codes[e.code().name] += 1
        samples.setdefault(e.code().name, e.details() or "")
        return False
    except Exception as e:  # an error of the client chain itself counts as a failed call
        codes[type(e).__name__] += 1
        samples.setdefault(type(e).__name__, str(e))
        return False
    return True
