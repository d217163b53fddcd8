"""HTTP load: ``wrk`` when it is installed (Debian package wrk), else an httpx closed loop.

Either way the generator runs in its own process, keeps ``concurrency`` connections open and
sends the same POST with a bearer token; non-2xx answers and socket errors count as errors.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.loadgen import percentile

__all__ = ["HttpLoad", "HttpResult", "HttpTarget"]


@dataclass(frozen=True, slots=True)
class HttpTarget:
    url: str
    body: bytes
    token: str


@dataclass(slots=True)
class HttpResult:
    calls: int  # completed with a 2xx
    errors: int
    elapsed: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.calls / self.elapsed if self.elapsed else 0.0


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNIT_MS[unit]


def parse_wrk(out: str) -> HttpResult:
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", out)
    if total is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    pct = {m.group(1): _ms(m.group(2), m.group(3))
           for m in re.finditer(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.MULTILINE)}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(g) for g in sock.groups()) if sock else 0)
    calls = int(total.group(1))
    return HttpResult(calls=max(0, calls - (int(non2xx.group(1)) if non2xx else 0)), errors=errors,
                      elapsed=_ms(total.group(2), total.group(3)) / 1e3,
                      p50_ms=pct.get("50", float("nan")), p99_ms=pct.get("99", float("nan")))


def _lua(target: HttpTarget) -> str:
    body = target.body.decode()
    return (
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{body}]==]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {target.token}"\n'
    )


class HttpLoad:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.wrk = shutil.which("wrk")

    @property
    def tool(self) -> str:
        return "wrk" if self.wrk else "httpx"

    def run(self, target: HttpTarget, seconds: float, concurrency: int) -> HttpResult:
        if self.wrk:
            return self._wrk(target, seconds, concurrency)
        return _httpx_in_process(target, seconds, concurrency)

    def _wrk(self, target: HttpTarget, seconds: float, concurrency: int) -> HttpResult:
        assert self.wrk is not None
        script = self.workdir / f"wrk-{abs(hash(target))}.lua"
        if not script.exists():
            script.write_text(_lua(target))
        argv = [self.wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency",
                "--timeout", "10s", "-s", str(script), target.url]
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
        return parse_wrk(out)


# ----------------------------------------------------------------------------- the fallback generator


async def _httpx_loop(target: HttpTarget, seconds: float, concurrency: int) -> HttpResult:
    import httpx

    headers = {"content-type": "application/json", "authorization": f"Bearer {target.token}"}
    latencies: list[int] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
        stop_at = time.perf_counter_ns() + int(seconds * 1e9)

        async def caller() -> None:
            nonlocal errors
            while (t0 := time.perf_counter_ns()) < stop_at:
                try:
                    r = await client.post(target.url, content=target.body, headers=headers)
                    ok = 200 <= r.status_code < 300
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter_ns() - t0)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return HttpResult(len(latencies), errors, elapsed, percentile(latencies, 0.5) / 1e6,
                      percentile(latencies, 0.99) / 1e6)


def _httpx_main(queue: mp.Queue[HttpResult], target: HttpTarget, seconds: float, concurrency: int) -> None:
    queue.put(asyncio.run(_httpx_loop(target, seconds, concurrency)))


def _httpx_in_process(target: HttpTarget, seconds: float, concurrency: int) -> HttpResult:
    ctx = mp.get_context("spawn")
    queue: mp.Queue[HttpResult] = ctx.Queue()
    proc = ctx.Process(target=_httpx_main, args=(queue, target, seconds, concurrency), daemon=True)
    proc.start()
    try:
        return queue.get(timeout=seconds + 60)
    finally:
        proc.join(10)
