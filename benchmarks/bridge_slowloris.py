"""The bridge's HTTP server under slow and idle clients, before/after the protocol limits (issue 13).

Real uvicorn over TLS in its own process, with the bridge's own settings (``uvicorn_options``) and a
stand-in app (``/healthz`` and a JSON echo: the limits live below the app, in the HTTP protocol, so the
mesh behind the bridge is not needed). ``before`` runs the settings the bridge had before the limits
(``http="httptools"``, ``limit_concurrency=max_connections``, nothing else); ``after`` runs today's.

    .venv/bin/python -m benchmarks.bridge_slowloris                 # everything, both modes
    .venv/bin/python -m benchmarks.bridge_slowloris --modes after --no-throughput --conns 2000 --ips 1

What it measures, per mode:
- throughput: ``wrk`` (HTTP/1.1 keep-alive over TLS, 16 connections, GET /healthz and POST /echo),
  rounds of both modes interleaved, medians;
- slowloris: ``--conns`` TLS connections from ``--ips`` loopback source addresses (127.0.0.2...), each
  sending a request head one byte every ``--drip`` seconds, from a separate process; meanwhile a
  prober on 127.0.0.200 makes fresh-connection GET /healthz requests and records status and latency
  (p50/p99; a closed or refused connection counts as an error); then how many attack sockets are open;
- idle: with ``max_connections: 20``, 20 TLS connections that never send a byte, then 20 probes;
- big head: one 4 MiB header line, the status (or closed connection) answered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.httpload import parse_wrk

TD = "bench.example.org"


# ----------------------------------------------------------------------------- the server process


def stand_in_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse(await request.json())

    return Starlette(routes=[Route("/healthz", healthz), Route("/echo", echo, methods=["POST"])])


def before_options(config: Any, listen: str) -> dict[str, Any]:
    """The settings ``uvicorn_options`` returned before the protocol limits (commit f44f502)."""
    import importlib.util

    from agentmesh.bridge.server import _tls_files, split_listen

    host, port = split_listen(listen)
    cert, key = _tls_files(config)
    return {"host": host, "port": port, "access_log": False, "log_level": "warning", "lifespan": "on",
            "proxy_headers": False, "server_header": False, "timeout_graceful_shutdown": 1,
            "loop": "uvloop" if importlib.util.find_spec("uvloop") else "auto",
            "limit_concurrency": config.bridge.max_connections, "http": "httptools",
            "ssl_certfile": str(cert), "ssl_keyfile": str(key)}


def serve(mesh: str, port: int, mode: str) -> None:
    import uvicorn

    from agentmesh.bridge.server import uvicorn_options
    from agentmesh.configfile import load_config

    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    config = load_config(mesh)
    listen = f"127.0.0.1:{port}"
    if mode == "before":
        opts = before_options(config, listen)
    else:
        opts = uvicorn_options(config, listen=listen)
        opts.pop("workers")
        opts.update(log_level="warning", timeout_graceful_shutdown=1)
    uvicorn.run(stand_in_app(), **opts)


# ----------------------------------------------------------------------------- clients


def client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def probe_once(port: int, source: str, timeout: float = 10.0) -> tuple[int, float]:
    """(status, seconds) of GET /healthz on a fresh TLS connection; status 0: closed or refused."""
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(),
                                                           server_hostname="localhost", local_addr=(source, 0))
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                line = await reader.readline()
                await reader.read()
            finally:
                writer.close()
        status = int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else 0
    except (OSError, TimeoutError, ssl.SSLError, IndexError, ValueError):
        status = 0
    return status, time.perf_counter() - t0


async def probe_many(port: int, n: int, source: str = "127.0.0.200", pause: float = 0.0) -> dict[str, Any]:
    results = []
    for _ in range(n):
        results.append(await probe_once(port, source))
        if pause:
            await asyncio.sleep(pause)
    lat = sorted(t for _, t in results)
    statuses: dict[str, int] = {}
    for s, _ in results:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    return {"n": n, "statuses": statuses, "p50_ms": round(lat[len(lat) // 2] * 1e3, 1),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3, 1)}


SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 100_000  # never finished


async def _slow_conn(port: int, source: str, drip: float, opened: list[int], alive: list[int]) -> None:
    head = SLOW_HEAD
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(),
                                                       server_hostname="localhost", local_addr=(source, 0))
    except (OSError, ssl.SSLError):
        return
    opened[0] += 1
    alive[0] += 1
    closed = asyncio.ensure_future(reader.read(65536))
    closed.add_done_callback(lambda f: f.cancelled() or f.exception())  # a reset is the expected ending
    try:
        for i in range(len(head)):
            writer.write(head[i:i + 1])
            done, _ = await asyncio.wait([closed], timeout=drip)
            if done:
                return
    except (OSError, ssl.SSLError):
        return
    finally:
        alive[0] -= 1
        writer.close()


async def attack(port: int, conns: int, ips: int, drip: float, hold: float, out: Path) -> None:
    """Opens ``conns`` slowloris connections (a few at a time), holds them ``hold`` s, reports counts."""
    opened, alive = [0], [0]
    tasks = []
    for i in range(conns):
        source = f"127.0.0.{2 + i % ips}"
        tasks.append(asyncio.ensure_future(_slow_conn(port, source, drip, opened, alive)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)
    out.write_text(json.dumps({"phase": "started"}))
    t0 = time.monotonic()
    samples = []
    while time.monotonic() - t0 < hold:
        await asyncio.sleep(1.0)
        samples.append((round(time.monotonic() - t0), opened[0], alive[0]))
        out.write_text(json.dumps({"phase": "holding", "samples": samples}))
    for t in tasks:
        t.cancel()
    out.write_text(json.dumps({"phase": "done", "opened": opened[0], "alive_at_end": alive[0], "samples": samples}))


async def idle_sockets(port: int, n: int) -> dict[str, Any]:
    conns = []
    for i in range(n):
        conns.append(await asyncio.open_connection("127.0.0.1", port, ssl=client_context(),
                                                   server_hostname="localhost", local_addr=(f"127.0.0.{2 + i}", 0)))
    await asyncio.sleep(0.5)
    probes = await probe_many(port, 20)
    closed = 0
    for reader, _ in conns:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.01):
                if await reader.read(1) == b"":
                    closed += 1
    for _, writer in conns:
        writer.close()
    return {"probes_while_idle": probes, "idle_closed_by_server": closed}


async def idle_lifetime(port: int, limit: float) -> float:
    """Seconds until the server closes a TLS connection that never sends a byte (``limit``: gave up)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(),
                                                   server_hostname="localhost")
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(limit):
            await reader.read()
    except TimeoutError:
        return limit
    finally:
        writer.close()
    return round(time.perf_counter() - t0, 2)


async def big_head(port: int, size: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(),
                                                   server_hostname="localhost")
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * size
                     + b"\r\nConnection: close\r\n\r\n")
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.drain()
        async with asyncio.timeout(30):
            line = await reader.readline()
    except (OSError, ssl.SSLError, TimeoutError) as e:
        return f"closed ({type(e).__name__})"
    finally:
        writer.close()
    return line.decode().strip() or "closed"


# ----------------------------------------------------------------------------- orchestration


def make_mesh(root: Path, bridge: dict[str, Any]) -> Path:
    import yaml

    from agentmesh.pki import CertificateAuthority, write_identity

    if not (root / "ca").exists():
        ca = CertificateAuthority.init(root / "ca", TD)
        write_identity(ca.issue("bridge", dns=["localhost"]), root / "identities" / "bridge")
    path = root / f"mesh-{abs(hash(json.dumps(bridge, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump({"trust_domain": TD, "ca": str(root / "ca"),
                                    "identities": str(root / "identities"), "agents": {}, "bridge": bridge}))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(mesh: Path, mode: str) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bridge_slowloris", "--serve", str(mesh), str(port),
                             mode], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(400):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None:
                raise RuntimeError(proc.communicate()[1].decode())
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wrk(port: int, path: str, seconds: int, workdir: Path) -> dict[str, float]:
    script = workdir / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.body = \'{"id": "t1", "input": [{"text": "hello"}]}\'\n'
                      'wrk.headers["Content-Type"] = "application/json"\n')
    argv = ["wrk", "-t1", "-c16", f"-d{seconds}s", "--latency", f"https://localhost:{port}{path}"]
    if path == "/echo":
        argv[1:1] = ["-s", str(script)]
    r = parse_wrk(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    return {"rps": round(r.rps), "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors}


def throughput(meshes: dict[str, Path], rounds: int, seconds: int, workdir: Path) -> dict[str, Any]:
    runs: dict[str, dict[str, list[dict[str, float]]]] = {m: {"/healthz": [], "/echo": []} for m in meshes}
    for _ in range(rounds):
        for mode, mesh in meshes.items():
            with server(mesh, mode) as port:
                asyncio.run(probe_many(port, 3))  # warm
                for path in ("/healthz", "/echo"):
                    runs[mode][path].append(wrk(port, path, seconds, workdir))
    return {mode: {path: {"rps_median": statistics.median(r["rps"] for r in rs),
                          "rps_all": [r["rps"] for r in rs],
                          "p99_ms_median": statistics.median(r["p99_ms"] for r in rs)}
                   for path, rs in paths.items()} for mode, paths in runs.items()}


def slowloris(mesh: Path, mode: str, conns: int, ips: int, drip: float, hold: float, workdir: Path) -> dict[str, Any]:
    status = workdir / f"attack-{mode}.json"
    status.unlink(missing_ok=True)
    with server(mesh, mode) as port:
        baseline = asyncio.run(probe_many(port, 20))
        attacker = subprocess.Popen([sys.executable, "-m", "benchmarks.bridge_slowloris", "--attack", str(port),
                                     str(conns), str(ips), str(drip), str(hold), str(status)])
        try:
            while not status.exists() or json.loads(status.read_text() or "{}").get("phase") != "holding":
                time.sleep(0.2)
                if attacker.poll() is not None:
                    break
            under = asyncio.run(probe_many(port, 100, pause=0.05))
            attacker.wait(hold + 60)
        finally:
            if attacker.poll() is None:
                attacker.kill()
        report = json.loads(status.read_text())
        after = asyncio.run(probe_many(port, 20))
    return {"baseline": baseline, "under_attack": under, "attack": report, "after_attack": after}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--attack", nargs=6, help=argparse.SUPPRESS)
    p.add_argument("--modes", default="before,after")
    p.add_argument("--conns", type=int, default=2000)
    p.add_argument("--ips", type=int, default=1, help="attack source addresses (127.0.0.2, ...)")
    p.add_argument("--drip", type=float, default=1.0, help="seconds between the attacker's bytes")
    p.add_argument("--hold", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--no-throughput", action="store_true")
    p.add_argument("--no-attack", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.serve[2])
        return
    if args.attack:
        port, conns, ips, drip, hold, out = args.attack
        asyncio.run(attack(int(port), int(conns), int(ips), float(drip), float(hold), Path(out)))
        return
    modes = args.modes.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="slowloris-"))
    results: dict[str, Any] = {"cpus": os.cpu_count()}
    try:
        default = make_mesh(workdir, {})
        small = make_mesh(workdir, {"max_connections": 20})
        if not args.no_throughput and shutil.which("wrk"):
            results["throughput"] = throughput({m: default for m in modes}, args.rounds, args.seconds, workdir)
            print(json.dumps(results["throughput"], indent=1), flush=True)
        if not args.no_attack:
            for mode in modes:
                r: dict[str, Any] = results.setdefault(mode, {})
                r["slowloris"] = slowloris(default, mode, args.conns, args.ips, args.drip, args.hold, workdir)
                print(mode, "slowloris", json.dumps(r["slowloris"]), flush=True)
                with server(small, mode) as port:
                    r["idle_20_of_20"] = asyncio.run(idle_sockets(port, 20))
                    r["idle_lifetime_s"] = asyncio.run(idle_lifetime(port, 30.0))
                    r["head_4MiB"] = asyncio.run(big_head(port, 4 * 1024 * 1024))
                print(mode, {k: v for k, v in r.items() if k != "slowloris"}, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
