"""``agentmesh status``: each member of a running mesh, asked now: health, certificates, tokens, errors.

Per member (the control plane, every agent, the bridge):

* **health**: gRPC health over mutual TLS (as ``up`` probes it), with the identity of ``--as`` (the control
  plane's by default: ``status`` runs where ``up`` does); the bridge: ``/readyz`` over HTTPS;
* **certificate expiry**: of the certificate the member serves right now (its own TLS handshake, so a
  renewal shows at once);
* **token expiry**: the member's own token, read from its metrics endpoint (``agentmesh_token_expiry_seconds``)
  where ``up`` recorded it for this run, else where the mesh file's ``metrics`` section puts it; a member
  holds a token only once it has made a call, and refreshes it on its next call when it has expired, so
  "expired" is no fault;
* **pid, restarts, last exit**: from the run ``up`` records (``<logs>/latest/run.json``);
* **last errors**: the last lines of this run's log of that member that report an error.

Exit status: 0 when every member is healthy, 3 when one is not (the report says which), 2 for an error.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from agentmesh.cli.output import add_output, emit, relative, table, utc
from agentmesh.cli.text import printable
from agentmesh.cli.usage import examples
from agentmesh.config import MeshConfig
from agentmesh.configfile import load_config
from agentmesh.errors import MeshError
from agentmesh.runtime.channel import secure_channel
from agentmesh.runtime.credentials import AgentIdentity
from agentmesh.runtime.healthcheck import SERVING, grpc_health
from agentmesh.runtime.probe import served_certificate
from agentmesh.runtime.runlogs import latest_run, pid_alive, read_state

__all__ = ["EXIT_UNHEALTHY", "MemberStatus", "MeshStatus", "collect", "register"]

EXIT_UNHEALTHY = 3
#: log lines that report a problem (the last few of this run are shown)
_ERROR_LINE = re.compile(r"error|exception|traceback|failed|refused|cannot|lost|denied|exited|crash", re.I)
_LOG_TAIL = 64 * 1024
_LAST_ERRORS = 3
_GAUGE = re.compile(r"^(agentmesh_token_expiry_seconds|agentmesh_certificate_expiry_seconds)(?:\{[^}]*\})?\s+(\S+)")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("status", help="each member of a running mesh: health, certificate and token expiry, "
                       "restarts, last errors",
                       description="Asks every member of the mesh now (health over mutual TLS, the certificate it\n"
                                   "serves, its token from its metrics endpoint) and reads what agentmesh up recorded\n"
                                   "for this run (pids, restarts, the last errors in each log).\n\n"
                                   "Exit status 0: every member healthy; 3: one is not; 2: an error.",
                       **examples("agentmesh status --config mesh.yaml",
                                  "agentmesh status --config mesh.yaml -o json",
                                  "agentmesh status --config mesh.yaml --as bridge"))
    p.add_argument("--config", type=Path, default=Path("mesh.yaml"), help="mesh config file (default: mesh.yaml)")
    p.add_argument("--as", dest="as_member", metavar="NAME",
                   help="the member whose identity asks the others (default: the control plane)")
    p.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS", help="per probe (default 2)")
    p.add_argument("--logs", type=Path, help="the log directory of up (default: <ca>/../logs)")
    add_output(p)
    p.set_defaults(func=_run)


@dataclass
class MemberStatus:
    name: str
    kind: str  # control | agent | bridge
    address: str
    healthy: bool = False
    health: str = "unknown"
    certificate_expires: datetime | None = None
    certificate_serial: str | None = None
    token_expires: datetime | None = None
    token_note: str = ""  # how token_expires is known, or why not
    metrics: str | None = None  # where its metrics endpoint listens (as up recorded it, else the config's)
    pid: int | None = None
    status: str | None = None  # as up recorded it
    restarts: int = 0
    last_exit: str | None = None
    last_errors: list[str] = field(default_factory=list)


@dataclass
class MeshStatus:
    config: str
    trust_domain: str
    run: str | None  # up's run id (its log directory)
    up_pid: int | None
    up_running: bool
    state: str | None  # what up last recorded: starting, up, stopping, stopped
    logs: str | None
    checked_at: datetime
    members: list[MemberStatus]


def _members(config: MeshConfig) -> Iterator[MemberStatus]:
    yield MemberStatus(config.control.name, "control", config.control.address)
    for name, agent in config.agents.items():
        yield MemberStatus(name, "agent", agent.address)
    yield MemberStatus(config.bridge.name, "bridge", config.bridge.listen)


async def _grpc_health(identity: AgentIdentity, m: MemberStatus, timeout: float) -> None:
    channel = secure_channel(identity, m.address, m.name)
    try:
        m.health = await grpc_health(channel, timeout=timeout)
        m.healthy = m.health == SERVING
    finally:
        await channel.close()


async def _grpc_certificate(config: MeshConfig, prober: str, m: MemberStatus, timeout: float) -> None:
    try:
        cert = await asyncio.to_thread(served_certificate, m.address, m.name, config.identity_dir(prober),
                                       timeout=timeout)
    except MeshError:
        return
    _note_certificate(m, cert)


def _note_certificate(m: MemberStatus, cert: x509.Certificate) -> None:
    m.certificate_expires = cert.not_valid_after_utc
    m.certificate_serial = f"{cert.serial_number:x}"


async def _bridge(config: MeshConfig, m: MemberStatus, timeout: float) -> None:
    host, _, port = m.address.rpartition(":")
    ctx = None
    if config.bridge.tls:
        custom = config.bridge.tls_cert is not None  # a public certificate: the system's roots
        ctx = ssl.create_default_context(cafile=None if custom else
                                         str(config.identity_dir(config.bridge.name) / "bundle.pem"))
        ctx.check_hostname = False  # the listen address, not the name clients use
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port), ssl=ctx),
                                                timeout)
    except (OSError, TimeoutError, ssl.SSLError) as e:
        m.health = "unreachable" if not isinstance(e, ssl.SSLError) else f"TLS: {e.reason or e}"
        return
    try:
        tls = writer.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        if der:
            _note_certificate(m, x509.load_der_x509_certificate(der))
        writer.write(f"GET /readyz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), timeout)  # (Connection: close: until the end)
    except (OSError, TimeoutError, ssl.SSLError):
        m.health = "unreachable"
        return
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    if b" 200 " in head.split(b"\r\n", 1)[0]:
        m.health, m.healthy = "ready", True
    else:
        unready = re.findall(rb'"unready":\s*\[([^\]]*)\]', body)
        names = unready[0].decode(errors="replace").replace('"', "").replace(" ", "") if unready else ""
        m.health = f"unready ({names})" if names else "unready"


def _metrics(address: str, timeout: float) -> dict[str, float]:
    url = address if "://" in address else f"http://{address}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as res:  # noqa: S310 (http(s) only: the config's address)
        text = res.read(4 * 1024 * 1024).decode(errors="replace")
    out = {}
    for line in text.splitlines():
        match = _GAUGE.match(line)
        if match:
            out[match.group(1)] = float(match.group(2))
    return out


async def _token(m: MemberStatus, timeout: float, now: float) -> tuple[datetime | None, str, dict[str, float]]:
    """When the member's own token expires (None: not known), how that is known or why not, and its gauges."""
    if m.kind == "control":
        return None, "none (the control plane issues the tokens)", {}
    address = m.metrics
    if not address or address.rsplit(":", 1)[-1] == "0":
        return None, "unknown (no metrics endpoint at a known address: see the metrics section of the mesh file)", {}
    try:
        gauges = await asyncio.to_thread(_metrics, address, timeout)
    except (OSError, urllib.error.URLError, ValueError) as e:
        return None, f"unknown (metrics at {address}: {getattr(e, 'reason', None) or e})", {}
    left = gauges.get("agentmesh_token_expiry_seconds")
    if left is None:
        return None, "none yet (a member fetches its token for its first call)", gauges
    return datetime.fromtimestamp(now + left, UTC), "metrics", gauges


def _last_errors(log: Path) -> list[str]:
    try:
        with open(log, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - _LOG_TAIL))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    lines = text.splitlines()[1:] if size > _LOG_TAIL else text.splitlines()
    return [line.strip() for line in lines if _ERROR_LINE.search(line)][-_LAST_ERRORS:]


async def collect(config: MeshConfig, *, prober: str | None = None, timeout: float = 2.0,
                  logs: Path | None = None, config_path: str = "") -> MeshStatus:
    """Asks every member of ``config`` now, and reads what ``up`` recorded for its latest run."""
    prober = prober or config.control.name
    identity = AgentIdentity(config.identity_dir(prober), config.trust_domain)  # one line if it is missing
    now = time.time()
    members = list(_members(config))
    run_dir = latest_run(logs or config.ca_dir.parent / "logs")
    state = read_state(run_dir) if run_dir is not None else {}
    recorded = {c.get("name"): c for c in state.get("children", []) if isinstance(c, dict)}
    pid = state.get("pid") if isinstance(state.get("pid"), int) else None
    up_running = pid is not None and pid_alive(pid)

    async def one(m: MemberStatus) -> None:
        if m.kind == "bridge":
            await _bridge(config, m, timeout)
        else:
            await asyncio.gather(_grpc_health(identity, m, timeout), _grpc_certificate(config, prober, m, timeout))
        seen: dict[str, Any] = recorded.get(m.name, {})
        m.metrics = (seen.get("metrics") if up_running else None) or config.metrics_address(m.name)
        m.token_expires, m.token_note, gauges = await _token(m, timeout, now)
        served = gauges.get("agentmesh_certificate_expiry_seconds")
        if m.certificate_expires is None and served is not None:
            m.certificate_expires = datetime.fromtimestamp(now + served, UTC)
        m.pid = seen.get("pid") if up_running else None
        m.status = seen.get("status")
        m.restarts, m.last_exit = int(seen.get("restarts") or 0), seen.get("last_exit")
        if run_dir is not None:
            m.last_errors = _last_errors(run_dir / f"{m.name}.log")

    await asyncio.gather(*(one(m) for m in members))
    return MeshStatus(config=config_path, trust_domain=config.trust_domain,
                      run=run_dir.name if run_dir is not None else None, up_pid=pid,
                      up_running=up_running, state=state.get("state"),
                      logs=str(run_dir) if run_dir is not None else None,
                      checked_at=datetime.fromtimestamp(now, UTC), members=members)


def _when(ts: datetime | None, now: datetime, empty: str) -> str:
    return f"{utc(ts.timestamp())} ({relative(ts.timestamp(), now.timestamp())})" if ts is not None else empty


def _lines(s: MeshStatus) -> Iterator[str]:
    """The report; what members, their logs and up's run.json say is escaped (:func:`printable`)."""
    if s.run is None:
        yield f"mesh {s.trust_domain}: no run of 'agentmesh up' recorded"
    else:
        up = f"up pid {s.up_pid} running" if s.up_running else "up not running"
        yield printable(f"mesh {s.trust_domain}: {up} ({s.state or 'unknown'}), run {s.run}, logs {s.logs}")
    rows = [("NAME", "KIND", "ADDRESS", "METRICS", "HEALTH", "PID", "RESTARTS", "CERTIFICATE EXPIRES",
             "TOKEN EXPIRES", "LAST ERROR")]
    for m in s.members:
        token = _when(m.token_expires, s.checked_at, "-")
        error = m.last_errors[-1] if m.last_errors else "-"
        rows.append((m.name, m.kind, m.address, m.metrics or "-", m.health, str(m.pid or "-"),
                     f"{m.restarts}" + (f" (last: {m.last_exit})" if m.last_exit else ""),
                     _when(m.certificate_expires, s.checked_at, "-"), token,
                     error if len(error) <= 80 else error[:77] + "..."))
    yield from table([tuple(printable(cell) for cell in row) for row in rows])


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    status = asyncio.run(collect(config, prober=args.as_member, timeout=args.timeout, logs=args.logs,
                                 config_path=str(args.config)))
    emit(args.output, status, lambda: _lines(status))
    return 0 if all(m.healthy for m in status.members) else EXIT_UNHEALTHY
